"""``shoal status``: does acceleration work on this node, and in the cluster?

Each check is a :class:`Check` with a status (ok, warn, fail, skip), a one-line summary and
details; docs/troubleshooting.md walks through the same checks by name. Gathering does the
I/O (HTTP to the agent, schedulers and webhook; reading the runtime's config files); turning
answers into checks is pure.

Node checks: ``agent``, ``scheduler``, ``runtime-config``, ``cache``, ``fallbacks``.
Cluster checks: ``schedulers``, ``agents``, ``webhook``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import aiohttp

from shoal.core.promtext import flatten
from shoal.core.units import format_bytes
from shoal.nodeconfig.containerd import check_config_path
from shoal.ops.cluster import AgentList, list_agents
from shoal.ops.failures import HttpStatusError, describe, describe_call
from shoal.ops.runtime_config import (
    CONTAINERD_CERTS_DIR,
    REGISTRIES_CONF_DIR,
    RuntimeConfig,
    check_runtime_config,
    on_host,
)

TIMEOUT = aiohttp.ClientTimeout(total=5, connect=3)
CACHE_WARN = 0.9
"""cache use above this share of its cap is a warning (eviction is about to churn)."""


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    summary: str
    details: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Report:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.status is not Status.FAIL for c in self.checks)

    def get(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}


# -- gathering (I/O) -----------------------------------------------------------------------


@dataclass(slots=True)
class NodeFacts:
    agent_url: str
    health: dict[str, Any] | None = None
    health_error: str | None = None
    node: dict[str, Any] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    scheduler_probe: dict[str, str | None] = field(default_factory=dict)
    """scheduler URL -> None (answers /healthz from here) or the error."""
    outage: dict[str, Any] | None = None
    """the agent's ``/p2p/v1/outage``: registries marked down, images served stale."""


async def _get_json(session: aiohttp.ClientSession, url: str, **kw: Any) -> Any:
    async with session.get(url, timeout=TIMEOUT, **kw) as resp:
        if resp.status != 200:
            raise HttpStatusError(resp.status, await resp.read())
        return await resp.json(content_type=None)


async def _probe(session: aiohttp.ClientSession, url: str, what: str, **kw: Any) -> str | None:
    """None when ``url`` answers ``/healthz``, else why not, in words (``what`` names the service)."""
    try:
        async with session.get(f"{url.rstrip('/')}/healthz", timeout=TIMEOUT, **kw) as resp:
            if resp.status == 200:
                return None
            raise HttpStatusError(resp.status, await resp.read())
    except (aiohttp.ClientError, TimeoutError, OSError, HttpStatusError) as exc:
        return describe_call(exc, what, url)


async def gather_node(session: aiohttp.ClientSession, agent_url: str) -> NodeFacts:
    facts = NodeFacts(agent_url.rstrip("/"))
    try:
        facts.health = await _get_json(session, f"{facts.agent_url}/healthz")
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        facts.health_error = describe_call(exc, "the agent", facts.agent_url)
        return facts
    try:
        facts.node = await _get_json(session, f"{facts.agent_url}/p2p/v1/node")
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        facts.node = None  # an agent older than this command: fewer checks
    try:
        facts.outage = await _get_json(session, f"{facts.agent_url}/p2p/v1/outage")
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        facts.outage = None
    try:
        async with session.get(f"{facts.agent_url}/metrics", timeout=TIMEOUT) as resp:
            facts.metrics = flatten(await resp.text())
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        facts.metrics = {}
    urls = list((facts.node or {}).get("schedulers") or {})
    probes = await asyncio.gather(*(_probe(session, u, "the scheduler") for u in urls))
    facts.scheduler_probe = dict(zip(urls, probes, strict=True))
    return facts


@dataclass(slots=True)
class ClusterFacts:
    schedulers: dict[str, str | None]
    """scheduler URL -> None when it answers /healthz, else the error."""
    agents: AgentList
    agent_probe: dict[str, str | None]
    webhook_url: str | None = None
    webhook_error: str | None = None


async def gather_cluster(
    session: aiohttp.ClientSession, schedulers: Sequence[str], token: str | None, webhook: str | None
) -> ClusterFacts:
    probes = await asyncio.gather(*(_probe(session, s, "the scheduler") for s in schedulers))
    listing = await list_agents(session, schedulers, token)
    addresses = [v.announcement.address for v in listing.agents]
    agent_probes = await asyncio.gather(*(_probe(session, f"http://{a}", "the agent") for a in addresses))
    facts = ClusterFacts(
        dict(zip(schedulers, probes, strict=True)), listing, dict(zip(addresses, agent_probes, strict=True))
    )
    if webhook:
        facts.webhook_url = webhook
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # answering is the question here, not its certificate
        facts.webhook_error = await _probe(session, webhook, "the webhook", ssl=insecure)
    return facts


# -- checks (pure) -------------------------------------------------------------------------


def _sum(metrics: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in metrics.items() if k.startswith(prefix))


def _by_label(metrics: dict[str, float], name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not key.startswith(name + "{") or not value:
            continue
        labels = dict(p.split("=", 1) for p in key[len(name) + 1 : -1].split(",") if "=" in p)
        out[labels.get(label, "?")] = out.get(labels.get(label, "?"), 0.0) + value
    return out


def agent_check(facts: NodeFacts) -> Check:
    if facts.health is None:
        return Check(
            "agent",
            Status.FAIL,
            f"the agent does not answer at {facts.agent_url}",
            [str(facts.health_error), "pulls go straight to the registry (the runtime falls back), unaccelerated"],
        )
    uptime = (facts.node or {}).get("uptime")
    since = f", up {uptime:.0f} s" if isinstance(uptime, int | float) else ""
    return Check("agent", Status.OK, f"answering at {facts.agent_url}, version {facts.health.get('version')}{since}")


def scheduler_check(facts: NodeFacts) -> Check:
    node = facts.node
    if node is None:
        return Check("scheduler", Status.SKIP, "unknown: the agent did not answer")
    if not node.get("p2p"):
        return Check("scheduler", Status.SKIP, f"download pattern {node.get('download_pattern')}: no scheduler used")
    contacts: dict[str, Any] = node.get("schedulers") or {}
    down = {}
    for url, contact in contacts.items():
        probe = facts.scheduler_probe.get(url)
        if probe is not None:
            down[url] = f"{probe} (from this node)"
        elif not contact.get("reachable"):
            down[url] = f"{url}: the agent's last announcement failed: {contact.get('error') or 'not yet sent'}"
    details = list(down.values())
    if not contacts or len(down) == len(contacts):
        return Check("scheduler", Status.FAIL, "no scheduler reachable: every blob comes from the registry", details)
    if down:
        return Check(
            "scheduler", Status.WARN, f"{len(contacts) - len(down)}/{len(contacts)} schedulers reachable", details
        )
    return Check("scheduler", Status.OK, f"{len(contacts)}/{len(contacts)} schedulers reachable")


IN_POD_HINT = "in a Pod? pass --host-root where the node's root is mounted (the agent Pod: /host)"


def runtime_config_check(found: list[RuntimeConfig] | None, hint: str | None = None) -> Check:
    """``hint``: a detail added to a FAIL (why the files may just be out of sight)."""
    if found is None:
        return Check(
            "runtime-config", Status.SKIP, "unknown: no registries (the agent did not answer; pass --registry)"
        )
    missing = [r for r in found if not r.ok]
    details = [f"{r.registry}: {p}" for r in found for p in r.points_at_agent]
    details += [f"{r.registry}: {why}" for r in found for why in r.elsewhere]
    if missing:
        names = ", ".join(r.registry for r in missing)
        details += [hint] if hint else []
        return Check(
            "runtime-config",
            Status.FAIL,
            f"the runtime does not send {names} to the agent (no hosts.toml or registries.conf.d entry naming it)",
            details,
        )
    return Check(
        "runtime-config",
        Status.OK,
        f"{len(found)} registr{'y' if len(found) == 1 else 'ies'} sent to the agent",
        details,
    )


def containerd_config_check(config_file: Path, certs_dir: Path | None, host_root: Path | None = None) -> Check:
    """Whether containerd reads the hosts.toml files at all: without ``config_path`` it
    ignores certs.d, and the files ``runtime-config`` found change nothing. Paths are the
    node's; ``host_root`` is where the node's root is mounted here."""
    if certs_dir is None:
        return Check("containerd-config", Status.SKIP, "not checked: no containerd certs directory configured")
    seen = on_host(host_root, config_file)
    where = f" (looked in {seen})" if host_root is not None else ""
    if not seen.is_file():
        return Check("containerd-config", Status.SKIP, f"{config_file} not found{where} (not a containerd node?)")
    try:
        text = seen.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return Check("containerd-config", Status.WARN, f"{config_file} cannot be read{where}: {describe(exc)}")
    result = check_config_path(text, certs_dir, config_file)
    return Check("containerd-config", Status.OK if result.ok else Status.FAIL, result.message)


def cache_check(facts: NodeFacts) -> Check:
    node = facts.node
    if node is None:
        return Check("cache", Status.SKIP, "unknown: the agent did not answer")
    used, cap, entries = int(node.get("cache_bytes") or 0), node.get("cache_max_bytes"), node.get("cache_entries")
    if cap:
        share = used / cap
        summary = f"{format_bytes(used)} of {format_bytes(cap)} ({share:.0%}), {entries} entries"
        if share > CACHE_WARN:
            return Check("cache", Status.WARN, summary, ["near the cap: least recently used blobs are being evicted"])
        return Check("cache", Status.OK, summary)
    return Check("cache", Status.OK, f"{format_bytes(used)}, {entries} entries (no cap but the disk)")


def fallbacks_check(facts: NodeFacts) -> Check:
    if facts.health is None:
        return Check("fallbacks", Status.SKIP, "unknown: the agent did not answer")
    m = facts.metrics
    swarm = _by_label(m, "shoal_agent_swarm_fallbacks_total", "reason")
    upstream = _by_label(m, "shoal_agent_upstream_errors_total", "reason")
    origin = _sum(m, "shoal_agent_origin_bytes_total")
    peers = _sum(m, "shoal_agent_peer_bytes_total{direction=download")
    traffic = f"{format_bytes(origin)} from the registry, {format_bytes(peers)} from peers since the agent started"
    details = [f"swarm gave up ({reason}): {n:.0f}x" for reason, n in sorted(swarm.items())]
    details += [f"registry fetch failed ({reason}): {n:.0f}x" for reason, n in sorted(upstream.items())]
    outage = outage_details(facts.outage)
    if outage:
        return Check("fallbacks", Status.WARN, f"registry outage: serving what the cluster holds; {traffic}", outage)
    if swarm or upstream:
        total = sum(swarm.values()) + sum(upstream.values())
        return Check("fallbacks", Status.WARN, f"{total:.0f} fallbacks or registry errors; {traffic}", details)
    return Check("fallbacks", Status.OK, f"none; {traffic}")


def outage_details(outage: dict[str, Any] | None) -> list[str]:
    """Registries marked down, and each image served stale in their current outage."""
    if not outage:
        return []
    down = {name: r for name, r in (outage.get("registries") or {}).items() if r.get("down")}
    details = [f"registry {name} down for {r.get('down_for', 0):.0f}s: {r.get('cause')}" for name, r in down.items()]
    details += [f"stale: {i['image']} ({i['digest']}), served {i['count']}x" for i in outage.get("stale") or []]
    return details


def node_checks(facts: NodeFacts, runtime: list[RuntimeConfig] | None, hint: str | None = None) -> list[Check]:
    return [
        agent_check(facts),
        scheduler_check(facts),
        runtime_config_check(runtime, hint),
        cache_check(facts),
        fallbacks_check(facts),
    ]


def cluster_checks(facts: ClusterFacts) -> list[Check]:
    if not facts.schedulers:
        checks = [
            Check("schedulers", Status.SKIP, "not checked (pass --scheduler URL)"),
            Check("agents", Status.SKIP, "not checked (pass --scheduler URL)"),
        ]
        return checks + _webhook_checks(facts)
    checks = []
    up = [u for u, e in facts.schedulers.items() if e is None]
    details = [e for e in facts.schedulers.values() if e is not None]
    status = Status.OK if len(up) == len(facts.schedulers) else Status.FAIL if not up else Status.WARN
    replicas = "replica" if len(facts.schedulers) == 1 else "replicas"
    checks.append(
        Check("schedulers", status, f"{len(up)}/{len(facts.schedulers)} scheduler {replicas} answer", details)
    )
    ready = [a for a, e in facts.agent_probe.items() if e is None]
    details = [e for e in facts.agent_probe.values() if e is not None]
    details += list(facts.agents.errors.values())
    if not facts.agent_probe:
        checks.append(Check("agents", Status.FAIL, "no agent has announced itself to the schedulers", details))
    else:
        status = Status.OK if len(ready) == len(facts.agent_probe) else Status.WARN
        checks.append(Check("agents", status, f"{len(ready)}/{len(facts.agent_probe)} agents ready", details))
    return checks + _webhook_checks(facts)


def _webhook_checks(facts: ClusterFacts) -> list[Check]:
    checks = []
    if facts.webhook_url is None:
        checks.append(Check("webhook", Status.SKIP, "not checked (pass --webhook URL)"))
    elif facts.webhook_error is None:
        checks.append(Check("webhook", Status.OK, f"answering at {facts.webhook_url}"))
    else:
        checks.append(
            Check(
                "webhook",
                Status.FAIL,
                f"not answering at {facts.webhook_url}: Pods are admitted unchanged (not accelerated)",
                [facts.webhook_error],
            )
        )
    return checks


def node_runtime(
    facts: NodeFacts,
    registries: Sequence[str],
    certs_dir: Path | None,
    conf_dir: Path | None,
    alias_domain: str = "",
    host_root: Path | None = None,
) -> list[RuntimeConfig] | None:
    node = facts.node or {}
    names = list(registries) or list(node.get("registries") or [])
    if not names:
        return None
    port = int(facts.agent_url.rsplit(":", 1)[-1]) if facts.agent_url.rsplit(":", 1)[-1].isdigit() else 65001
    own = facts.agent_url.split("://", 1)[-1].partition("/")[0]
    addresses = [a for a in (own, node.get("address"), node.get("listen")) if a]
    return check_runtime_config(
        names, port, addresses, certs_dir=certs_dir, conf_dir=conf_dir, alias_domain=alias_domain, host_root=host_root
    )


def render(report: Report) -> str:
    """The human summary: one line per check, details indented under it."""
    marks = {Status.OK: "ok", Status.WARN: "WARN", Status.FAIL: "FAIL", Status.SKIP: "--"}
    lines = []
    for check in report.checks:
        lines.append(f"{marks[check.status]:<5} {check.name:<15} {check.summary}")
        lines.extend(f"{'':<22}{d}" for d in check.details)
    lines.append("acceleration works" if report.ok else "acceleration is NOT working: see the FAIL lines above")
    return "\n".join(lines)


__all__ = [
    "CONTAINERD_CERTS_DIR",
    "IN_POD_HINT",
    "REGISTRIES_CONF_DIR",
    "Check",
    "ClusterFacts",
    "NodeFacts",
    "Report",
    "Status",
    "cluster_checks",
    "gather_cluster",
    "gather_node",
    "node_checks",
    "node_runtime",
    "render",
]
