"""Every default the docs and the chart state is held to the code's one definition.

The code defines each setting once: the swarm's in ``SwarmSettings`` (read from the swarm's
own dataclasses), the agent's in ``AgentConfig``, the scheduler's in ``SchedulerConfig``, the
webhook's in ``webhook/config.py``. The chart's ``values.yaml`` either leaves a setting to that
definition or maps onto it; the docs' tables restate both. A number changed in one place and
not the others fails here, naming the place.
"""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.agent.config import DEFAULT_PORT as AGENT_PORT
from shoal.agent.config import AgentConfig
from shoal.agent.swarm_settings import SwarmSettings
from shoal.cli.agent import SWARM_FLAGS, agent
from shoal.cli.scheduler import scheduler
from shoal.core.units import parse_duration, parse_size
from shoal.scheduler.config import DEFAULT_PORT as SCHEDULER_PORT
from shoal.scheduler.config import SchedulerConfig
from shoal.webhook.config import WebhookConfig

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "charts" / "shoal"
VALUES: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
SWARM = SwarmSettings()
AGENT = {f.name: f.default for f in fields(AgentConfig)}  # AgentConfig() itself wants a registry
SCHEDULER = SchedulerConfig()
WEBHOOK = WebhookConfig(registries=frozenset())


def table(doc: str, heading: str) -> list[list[str]]:
    """The rows (cells stripped) of the first Markdown table whose header starts with ``heading``.

    ``doc`` is a page of docs/, or a path from the repository's root.
    """
    lines = (ROOT / ("docs/" + doc if "/" not in doc else doc)).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return rows


def camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.title() for part in rest)


def snake(camel_case: str) -> str:
    return re.sub(r"[A-Z]", lambda m: "_" + m.group().lower(), camel_case)


def seconds_or_number(text: str) -> float:
    return float(parse_duration(text)) if re.search(r"[a-z]$", text) else float(text)


def values_at(path: str) -> Any:
    node: Any = VALUES
    for key in path.split("."):
        node = node[key]
    return node


FREE_MAPS = {"resources", "labels", "nodeSelector"}
"""values that are maps of the user's own keys: one setting each, not a group of settings"""


def leaves(node: Any, path: str = "") -> list[str]:
    """Dotted paths of values.yaml's settings."""
    if isinstance(node, dict) and path.rsplit(".", 1)[-1] not in FREE_MAPS:
        return [leaf for key, value in node.items() for leaf in leaves(value, f"{path}.{key}".lstrip("."))]
    return [path]


ALL_LEAVES = leaves(VALUES)


class TestSwarmSettings:
    """docs/operations.md's swarm table, the agent's flags and the chart's agent.swarm values."""

    ROWS = table("operations.md", "| `swarm.` key")

    def test_one_row_per_setting(self) -> None:
        keys = [row[0].strip("`") for row in self.ROWS]
        assert sorted(keys) == sorted(f.name for f in fields(SwarmSettings))

    @pytest.mark.parametrize("row", ROWS, ids=lambda r: r[0].strip("`"))
    def test_documented_default_is_the_codes(self, row: list[str]) -> None:
        key, _, default = row[0].strip("`"), row[1], row[2]
        assert seconds_or_number(default) == pytest.approx(getattr(SWARM, key)), f"operations.md swarm.{key}"

    @pytest.mark.parametrize("row", ROWS, ids=lambda r: r[0].strip("`"))
    def test_flag_and_helm_value_are_the_keys(self, row: list[str]) -> None:
        key, names = row[0].strip("`"), re.findall(r"`([^`]+)`", row[1])
        if key in SWARM_FLAGS:
            assert names == [f"--{key.replace('_', '-')}", camel(key)]
        else:
            assert names == [], f"swarm.{key} has no flag, but the docs name one"

    def test_the_same_keys_everywhere(self) -> None:
        """YAML keys, agent flags, Helm values and their schema: the same four settings."""
        flags = {p.name for p in agent.params if p.name in {f.name for f in fields(SwarmSettings)}}
        helm = {snake(k) for k in VALUES["agent"]["swarm"]}
        schema = {snake(k) for k in SCHEMA["properties"]["agent"]["properties"]["swarm"]["properties"]}
        documented = {row[0].strip("`") for row in self.ROWS if row[1]}
        assert set(SWARM_FLAGS) == flags == helm == schema == documented

    @pytest.mark.parametrize("key", list(VALUES["agent"]["swarm"]))
    def test_values_yaml_leaves_it_to_the_agent_and_says_its_default(self, key: str) -> None:
        assert VALUES["agent"]["swarm"][key] in (None, "")
        text = (CHART / "values.yaml").read_text()
        comment = re.search(rf"((?:\n    # [^\n]*)+)\n    {key}:", text)
        assert comment is not None, key
        stated = re.search(r"\[([^\]]+)\]", comment.group(1))
        assert stated is not None, f"values.yaml agent.swarm.{key}: no [default]"
        assert seconds_or_number(stated.group(1)) == pytest.approx(getattr(SWARM, snake(key))), key

    @pytest.mark.parametrize("flag", SWARM_FLAGS)
    def test_the_agents_help_states_the_default(self, flag: str) -> None:
        option = next(p for p in agent.params if p.name == flag)
        stated = re.search(r"\[default: ([^\]]+)\]", str(getattr(option, "help", "")))
        assert stated is not None
        assert seconds_or_number(stated.group(1)) == pytest.approx(getattr(SWARM, flag))


SCHEDULER_ROWS = [row for row in table("scheduler.md", "| flag | default") if row[1] not in ("required", "off")]
SCHEDULER_WORDS = {
    "--max-blob-size": ("1 TiB", 1 << 40),
    "--listen": ("`0.0.0.0:8002`", "0.0.0.0:8002"),
    "--cert-ttl": ("`24h`", 24 * 3600.0),
    "--tls-ca-dir": ("required off loopback", None),
    "--tls-name": ("(the `--listen` IP)", ()),
    "--agent-service-account": ("none (lab)", None),
    "--kubeconfig": ("in-cluster", None),
}
FIELDS = {"--tls-name": "tls_names"}


class TestSchedulerFlags:
    """docs/scheduler.md's flag table against SchedulerConfig and ``shoal scheduler``'s options."""

    @pytest.mark.parametrize("row", SCHEDULER_ROWS, ids=lambda r: r[0].split()[0].strip("`"))
    def test_documented_default_is_the_codes(self, row: list[str]) -> None:
        flag = row[0].split()[0].strip("`")
        field = FIELDS.get(flag, flag.removeprefix("--").replace("-", "_"))
        code = getattr(SCHEDULER, field)
        option = next(p for p in scheduler.params if p.name == field)
        if flag in SCHEDULER_WORDS:
            text, value = SCHEDULER_WORDS[flag]
            assert (row[1], code) == (text, value)
        elif isinstance(code, str):
            assert row[1].strip("`") == code
        else:
            assert float(row[1]) == pytest.approx(code), f"scheduler.md {flag}"
        default = option.default if isinstance(option.default, str | int | float | tuple) else None  # unset
        if isinstance(default, str) and isinstance(code, float):
            default = parse_duration(default)
        assert default in (None, code), f"shoal scheduler {flag}"


# values.yaml settings the code also defines, and how the chart's value maps onto it.
CODE_DEFAULTS: dict[str, tuple[Any, Any]] = {
    "p2p.port": (AGENT_PORT, int),
    "p2p.ratelimit": (AGENT["ratelimit"], parse_size),
    "p2p.plusMode.cacheTTL": (AGENT["cache_ttl"], parse_duration),
    "p2p.plusMode.downloadPattern": (AGENT["download_pattern"], str),
    "scheduler.port": (SCHEDULER_PORT, int),
    "labelPrefix": (WEBHOOK.label_prefix, str),
    "webhook.secretPrefix": (WEBHOOK.secret_prefix, str),
    "webhook.secretSuffix": (WEBHOOK.secret_suffix, str),
    "webhook.rewriteWithoutPullSecret": (WEBHOOK.rewrite_without_pull_secret, bool),
    "aliasDomain": (WEBHOOK.alias_domain, str),
    "agent.outageGrace": (AGENT["outage_grace"], parse_duration),
    "agent.registryTimeout": (AGENT["registry_timeout"], parse_duration),
    "tls.certTTL": (SCHEDULER.cert_ttl, parse_duration),
    "tls.tokenAudience": (SCHEDULER.token_audience, str),
}
# Settings only the chart has (Kubernetes objects, or a choice the chart makes for its agents).
CHART_ONLY = {
    "registries", "mode", "p2p.plusMode.cacheMaxSize", "p2p.plusMode.cacheHostPath",
    "p2p.plusMode.nodeSelectorEnable", "image.repository", "image.tag", "image.pullPolicy",
    "imagePullSecrets", "agent.resources", "agent.tolerations", "agent.nodeSelector",
    "agent.priorityClassName", "agent.cacheSizeLimit", "priorityClass.create", "priorityClass.value",
    "nodeConfig.containerdCertsDir", "nodeConfig.containerdConfig", "nodeConfig.registriesConfDir",
    "nodeConfig.requireConfigPath", "nodeConfig.everyNode", "nodeConfig.pauseImage", "nodeConfig.resources",
    "startupTaint.enabled", "startupTaint.key", "namespace.create", "namespace.podSecurity.enforce",
    "namespace.podSecurity.warn", "namespace.podSecurity.audit", "scheduler.replicas", "scheduler.resources",
    "scheduler.tolerations", "scheduler.nodeSelector", "webhook.replicas", "webhook.port",
    "webhook.timeoutSeconds", "webhook.restrictSecretWrites", "webhook.podDisruptionBudget.enabled",
    "webhook.podDisruptionBudget.maxUnavailable", "webhook.certManager.enabled", "webhook.resources",
    "webhook.tolerations", "webhook.nodeSelector", "logFormat", "monitoring.podMonitor.enabled",
    "monitoring.podMonitor.interval", "monitoring.podMonitor.labels", "monitoring.serviceMonitor.enabled",
    "monitoring.serviceMonitor.interval", "monitoring.serviceMonitor.labels", "monitoring.dashboard.enabled",
    "monitoring.dashboard.labels", "monitoring.dashboard.namespace", "networkPolicy.enabled",
    "networkPolicy.webhookFrom", "networkPolicy.schedulerFrom", "agent.containerdContentDir", "tls.enabled",
    "tls.ca.existingSecret", "tls.ca.certManager.enabled",
}  # fmt: skip
SWARM_VALUES = {f"agent.swarm.{k}" for k in VALUES["agent"]["swarm"]}


class TestValuesYaml:
    """Each chart value either maps onto the code's default or is the chart's own."""

    def test_every_value_is_classified(self) -> None:
        assert set(ALL_LEAVES) == set(CODE_DEFAULTS) | CHART_ONLY | SWARM_VALUES
        assert not set(CODE_DEFAULTS) & CHART_ONLY

    @pytest.mark.parametrize("path", list(CODE_DEFAULTS))
    def test_chart_default_is_the_codes(self, path: str) -> None:
        code, convert = CODE_DEFAULTS[path]
        assert convert(values_at(path)) == code, f"values.yaml {path}"


# Defaults the Values table states in words; each is checked against values.yaml here.
PROSE: dict[str, tuple[str, Any]] = {
    "registries": ("*(required)*", lambda v: v == [] and "registries" in SCHEMA["required"]),
    "image.tag": ("appVersion", lambda v: v == ""),
    "agent.resources": ("small (1Gi ephemeral-storage request)", lambda v: v["requests"]["ephemeral-storage"] == "1Gi"),
    "agent.tolerations": ("tolerate all", lambda v: v == [{"operator": "Exists"}]),
    "scheduler.resources": ("small", lambda v: "limits" in v),
    "webhook.resources": ("small", lambda v: "limits" in v),
    "nodeConfig.resources": ("small", lambda v: "limits" in v),
    "startupTaint.key": ("`<labelPrefix>/agent-not-ready`", lambda v: v == ""),
}


def expand(names_cell: str) -> list[str]:
    """```a.b.c`, `.d`, `.e/f``` -> a.b.c, a.b.d, a.b.e, a.b.f (the table's shorthand)."""
    names = re.findall(r"`([^`]+)`", names_cell)
    base = names[0].rsplit(".", 1)[0] + "." if "." in names[0] else ""
    out: list[str] = []
    for name in names:
        full = name if not name.startswith(".") else base + name[1:]
        head, _, tail = full.rpartition(".")
        out += [f"{head}.{part}".lstrip(".") for part in tail.split("/")]
    return out


def split_defaults(cell: str) -> list[str]:
    """Items separated by ``, `` or ``/`` outside parentheses and backticks."""
    items, depth, tick, current = [], 0, False, ""
    for char in cell:
        if char == "`":
            tick = not tick
        elif not tick and char == "(":
            depth += 1
        elif not tick and char == ")":
            depth -= 1
        if not tick and depth == 0 and char in ",/":
            items.append(current.strip())
            current = ""
            continue
        current += char
    items.append(current.strip())
    return items


VALUES_ROWS = table("kubernetes.md", "| Value | Default")
CHART_README_ROWS = table("deploy/charts/shoal/README.md", "| value | default")


class TestValuesTables:
    """docs/kubernetes.md's Values table (every value) and the chart README's: defaults as values.yaml has them."""

    def test_every_value_has_a_row(self) -> None:
        documented = {name for row in VALUES_ROWS for name in expand(row[0])}
        assert set(ALL_LEAVES) - documented == set()
        assert documented - set(ALL_LEAVES) == set()

    @pytest.mark.parametrize("row", VALUES_ROWS + CHART_README_ROWS, ids=lambda r: r[0][:40])
    def test_defaults(self, row: list[str]) -> None:
        names = expand(row[0])
        if row[1].startswith("empty (the agent's"):
            stated = re.findall(r"`([^`]+)`", row[1])
            assert all(values_at(n) in (None, "") for n in names)
            code = [getattr(SWARM, snake(n.rsplit(".", 1)[1])) for n in names]
            assert [seconds_or_number(s) for s in stated] == pytest.approx(code), "kubernetes.md agent.swarm"
            return
        items = split_defaults(row[1])
        assert len(items) == len(names), f"kubernetes.md: {len(names)} values, {len(items)} defaults: {row[1]}"
        for name, item in zip(names, items, strict=True):
            if name in PROSE:
                text, check = PROSE[name]
                assert item == text, f"kubernetes.md {name}"
                assert check(values_at(name)), f"values.yaml {name} is not what the docs say ({text})"
                continue
            value = re.match(r"^`([^`]*)`", item)
            assert value is not None, f"kubernetes.md {name}: {item!r} is neither a value nor a known phrase"
            assert yaml.safe_load(value.group(1) or '""') == values_at(name), f"kubernetes.md {name}"


@pytest.mark.parametrize("key", list(VALUES["agent"]["swarm"]))
def test_each_helm_value_reaches_the_agent_setting_of_its_name(key: str) -> None:
    """agent.swarm.<key> renders as the flag of the same name, which sets swarm.<snake key>."""
    from shoal.agent.config import load_config
    from shoal.cli.agent import merge_flags
    from shoal.ops.helm import build_values, manifest_documents, render

    field = snake(key)
    default = getattr(SWARM, field)
    chosen = f"{int(default * 2)}s" if isinstance(default, float) else str(default * 2)
    rendered = manifest_documents(render(build_values((), ("registries=r.example.com", f"agent.swarm.{key}={chosen}"))))
    (daemonset,) = [d for d in rendered if d["kind"] == "DaemonSet" and d["metadata"]["name"].endswith("-agent")]
    args = daemonset["spec"]["template"]["spec"]["containers"][0]["args"]
    flag = f"--{field.replace('_', '-')}"
    assert args[args.index(flag) + 1] == chosen
    params = agent.make_context("agent", args[1:]).params
    params.pop("config_file")
    assert getattr(load_config(merge_flags({}, params)).swarm, field) == pytest.approx(default * 2)
