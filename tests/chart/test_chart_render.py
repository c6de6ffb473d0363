"""The chart rendered by the real Helm engine, validated against Kubernetes schemas."""

from __future__ import annotations

import base64
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from shoal.agent.config import AgentConfig, load_config
from shoal.agent.swarm_settings import SwarmSettings
from shoal.cli.agent import agent, merge_flags
from shoal.cli.install import install, upgrade
from shoal.ops.helm import build_values, manifest_documents, render

KUBE_VERSION = "1.32"
# cert-manager's CRDs are not in the Kubernetes schemas; their shape is asserted by hand.
NOT_IN_SCHEMAS = {"Issuer", "Certificate"}
BASE = "registries=registry.example.com"

Doc = dict[str, Any]


@cache
def _render_cached(sets: tuple[str, ...], upgrade_: bool = False) -> tuple[Doc, ...]:
    return tuple(manifest_documents(render(build_values((), sets), upgrade=upgrade_)))


def docs(*sets: str) -> list[Doc]:
    return list(_render_cached((BASE, *sets)))


def find(documents: list[Doc], kind: str, suffix: str = "") -> Doc:
    matches = [d for d in documents if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    assert len(matches) == 1, f"{kind} *{suffix}: {[d['metadata']['name'] for d in matches]}"
    return matches[0]


def agent_container(documents: list[Doc]) -> Doc:
    container: Doc = find(documents, "DaemonSet", "-agent")["spec"]["template"]["spec"]["containers"][0]
    return container


def flag(args: list[str], name: str) -> list[str]:
    """Every value given to ``name`` in an argv list."""
    return [args[i + 1] for i, a in enumerate(args) if a == name]


PARAMETER_SETS = [
    (),
    ("p2p.port=65002",),
    ("p2p.ratelimit=1G",),
    ("p2p.plusMode.cacheTTL=72h",),
    ("p2p.plusMode.cacheHostPath=/var/lib/shoal-cache",),
    ("p2p.plusMode.downloadPattern=source",),
    ("p2p.plusMode.nodeSelectorEnable=true",),
    ("labelPrefix=shoal.io",),
    ("webhook.certManager.enabled=true",),
    ("mode=mirror",),
    ("mode=mirror", "p2p.plusMode.nodeSelectorEnable=true"),
    ("aliasDomain=p2p.internal", "webhook.rewriteWithoutPullSecret=true"),
    ("namespace.create=true",),
    ("agent.priorityClassName=system-node-critical",),
    ("nodeConfig.registriesConfDir=", "nodeConfig.requireConfigPath=true"),
    ("agent.swarm.maxParents=3", "agent.swarm.stallTimeout=40s", "agent.swarm.maxPeerLinks=256"),
    (
        "networkPolicy.webhookFrom[0].ipBlock.cidr=10.0.0.0/28",
        "networkPolicy.schedulerFrom[0].ipBlock.cidr=10.1.0.0/16",
    ),
]


class TestSchemas:
    """Every rendered object is a valid Kubernetes object for each parameter of the brief."""

    @pytest.mark.parametrize("sets", PARAMETER_SETS, ids=lambda s: ",".join(s) or "defaults")
    def test_all_manifests_validate(self, sets: tuple[str, ...]) -> None:
        rendered = docs(*sets)
        assert rendered
        for doc in rendered:
            if doc["kind"] in NOT_IN_SCHEMAS:
                continue
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)

    def test_default_objects(self) -> None:
        kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs())
        assert kinds == [
            ("ClusterRole", "shoal-scheduler"),
            ("ClusterRole", "shoal-webhook"),
            ("ClusterRoleBinding", "shoal-scheduler"),
            ("ClusterRoleBinding", "shoal-webhook"),
            ("ConfigMap", "shoal-dashboard"),
            ("DaemonSet", "shoal-agent"),
            ("DaemonSet", "shoal-node-config"),
            ("Deployment", "shoal-webhook"),
            ("MutatingWebhookConfiguration", "shoal"),
            ("NetworkPolicy", "shoal-scheduler"),
            ("NetworkPolicy", "shoal-webhook"),
            ("PodDisruptionBudget", "shoal-scheduler"),
            ("PodDisruptionBudget", "shoal-webhook"),
            ("PriorityClass", "shoal-node"),
            ("Role", "shoal-scheduler"),
            ("RoleBinding", "shoal-scheduler"),
            ("Secret", "shoal-ca"),
            ("Secret", "shoal-peer-token"),
            ("Secret", "shoal-webhook-tls"),
            ("Service", "shoal-agent"),
            ("Service", "shoal-scheduler"),
            ("Service", "shoal-scheduler-headless"),
            ("Service", "shoal-webhook"),
            ("ServiceAccount", "shoal-agent"),
            ("ServiceAccount", "shoal-scheduler"),
            ("ServiceAccount", "shoal-webhook"),
            ("StatefulSet", "shoal-scheduler"),
            ("ValidatingAdmissionPolicy", "shoal-webhook-secret-writes"),
            ("ValidatingAdmissionPolicyBinding", "shoal-webhook-secret-writes"),
        ]


class TestValuesSchema:
    """values.schema.json rejects bad values with a message naming the key."""

    @pytest.mark.parametrize(
        ("expression", "message"),
        [
            ("p2p.port=80", "/p2p/port"),
            ("p2p.port=70000", "/p2p/port"),
            ("p2p.plusMode.cacheTTL=forever", "/p2p/plusMode/cacheTTL"),
            ("p2p.plusMode.downloadPattern=bittorrent", "/p2p/plusMode/downloadPattern"),
            ("p2p.ratelimit=fast", "/p2p/ratelimit"),
            ("p2p.plusMode.cacheHostPath=relative/dir", "/p2p/plusMode/cacheHostPath"),
            ("registries=not a host", "/registries"),
            ("labelPrefix=Bad/Prefix", "/labelPrefix"),
            ("agent.swarm.maxParents=0", "/agent/swarm/maxParents"),
            ("agent.swarm.maxPeerLinks=many", "/agent/swarm/maxPeerLinks"),
            ("agent.swarm.stallTimeout=soon", "/agent/swarm/stallTimeout"),
            ("agent.swarm.pieceTimeout=30", "/agent/swarm/pieceTimeout"),
            ("agent.swarm.maxParent=3", "/agent/swarm"),
        ],
    )
    def test_rejected(self, expression: str, message: str) -> None:
        with pytest.raises(helm_python.HelmValuesError, match=message):
            render(build_values((), (BASE, expression)))

    def test_registries_required(self) -> None:
        with pytest.raises(helm_python.HelmRenderError, match="registries is required"):
            render({})


class TestParameters:
    """Each brief parameter changes what it should, and only that."""

    def test_defaults(self) -> None:
        container = agent_container(docs())
        args = container["args"]
        assert args[0] == "agent"
        assert flag(args, "--listen") == ["0.0.0.0:65001"]
        assert flag(args, "--advertise") == ["$(POD_IP):65001"]
        assert flag(args, "--cache-ttl") == ["24h"]
        assert flag(args, "--ratelimit") == ["512M"]
        assert flag(args, "--cache-dir") == ["/var/lib/shoal"]
        assert flag(args, "--download-pattern") == ["p2p"]
        assert flag(args, "--scheduler") == [
            "https://shoal-scheduler-0.shoal-scheduler-headless.shoal-system.svc:8002,"
            "https://shoal-scheduler-1.shoal-scheduler-headless.shoal-system.svc:8002"
        ]
        assert flag(args, "--registry") == ["registry.example.com"]
        assert flag(args, "--peer-token-file") == ["/etc/shoal/peer-token/token"]
        pod = find(docs(), "DaemonSet", "-agent")["spec"]["template"]["spec"]
        assert pod["hostNetwork"] is True
        assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}  # no agent on Windows nodes
        cache_volume = next(v for v in pod["volumes"] if v["name"] == "cache")
        assert cache_volume == {"name": "cache", "emptyDir": {"sizeLimit": "63Gi"}}  # 1.25 x 50G

    def test_port(self) -> None:
        rendered = docs("p2p.port=65002")
        container = agent_container(rendered)
        assert container["ports"] == [{"name": "p2p", "containerPort": 65002, "hostPort": 65002, "protocol": "TCP"}]
        assert flag(container["args"], "--listen") == ["0.0.0.0:65002"]
        assert container["readinessProbe"]["httpGet"]["port"] == 65002
        assert container["livenessProbe"]["httpGet"]["port"] == 65002
        webhook_args = find(rendered, "Deployment", "-webhook")["spec"]["template"]["spec"]["containers"][0]["args"]
        assert flag(webhook_args, "--p2p-port") == ["65002"]

    def test_ratelimit(self) -> None:
        assert flag(agent_container(docs("p2p.ratelimit=1G"))["args"], "--ratelimit") == ["1G"]

    def test_cache_host_path(self) -> None:
        pod = find(docs("p2p.plusMode.cacheHostPath=/var/lib/shoal-cache"), "DaemonSet", "-agent")["spec"]["template"][
            "spec"
        ]
        cache_volume = next(v for v in pod["volumes"] if v["name"] == "cache")
        assert cache_volume["hostPath"] == {
            "path": "/var/lib/shoal-cache",
            "type": "DirectoryOrCreate",
        }
        mounts = pod["containers"][0]["volumeMounts"]
        assert {"name": "cache", "mountPath": "/var/lib/shoal"} in mounts

    def test_source_mode_has_no_scheduler(self) -> None:
        rendered = docs("p2p.plusMode.downloadPattern=source")
        names = {(d["kind"], d["metadata"]["name"]) for d in rendered}
        assert not any("scheduler" in name for _, name in names)
        args = agent_container(rendered)["args"]
        assert flag(args, "--download-pattern") == ["source"]
        assert flag(args, "--scheduler") == []

    def test_node_selector(self) -> None:
        rendered = docs("p2p.plusMode.nodeSelectorEnable=true")
        for kind, suffix in (("DaemonSet", "-agent"), ("StatefulSet", "-scheduler")):
            spec = find(rendered, kind, suffix)["spec"]["template"]["spec"]
            assert spec["nodeSelector"]["k8s.aliyun.com/p2p-plus-node"] == "true"
        webhook = find(rendered, "Deployment", "-webhook")["spec"]["template"]["spec"]
        assert "nodeSelector" not in webhook

    def test_node_selector_follows_label_prefix(self) -> None:
        rendered = docs("p2p.plusMode.nodeSelectorEnable=true", "labelPrefix=shoal.io")
        spec = find(rendered, "DaemonSet", "-agent")["spec"]["template"]["spec"]
        assert spec["nodeSelector"]["shoal.io/p2p-plus-node"] == "true"

    def test_registries_list_with_origin_urls(self, tmp_path: Path) -> None:
        values = tmp_path / "values.yaml"
        values.write_text(
            yaml.safe_dump(
                {
                    "registries": [
                        {"host": "registry.example.com", "url": "https://registry-vpc.example.com"},
                        {"host": "docker.io"},
                    ]
                }
            )
        )
        rendered = manifest_documents(render(build_values((str(values),), ())))
        assert flag(agent_container(rendered)["args"], "--registry") == [
            "registry.example.com=https://registry-vpc.example.com",
            "docker.io",
        ]
        webhook_args = find(rendered, "Deployment", "-webhook")["spec"]["template"]["spec"]["containers"][0]["args"]
        assert flag(webhook_args, "--registry") == ["registry.example.com", "docker.io"]

    def test_comma_separated_registries(self) -> None:
        rendered = docs("registries=a.example.com\\,b.example.com:5000")
        assert flag(agent_container(rendered)["args"], "--registry") == [
            "a.example.com",
            "b.example.com:5000",
        ]

    def test_upgrade_changes_agent_ttl(self) -> None:
        result = CliRunner().invoke(
            upgrade, ["--dry-run", "--reset-values", "--set", BASE, "--set", "p2p.plusMode.cacheTTL=72h"]
        )
        assert result.exit_code == 0, result.output
        rendered = [d for d in yaml.safe_load_all(result.output) if d]
        assert flag(agent_container(rendered)["args"], "--cache-ttl") == ["72h"]


SWARM_FLAGS = ["--max-parents", "--stall-timeout", "--piece-timeout", "--max-peer-links"]


def agent_config(args: list[str]) -> AgentConfig:
    """The AgentConfig ``shoal agent`` builds from a rendered argv (without starting it)."""
    assert args[0] == "agent"
    params = agent.make_context("agent", args[1:]).params
    params.pop("config_file")
    return load_config(merge_flags({}, params))


class TestAgentSwarm:
    """agent.swarm.* values become the agent's swarm flags, and only when set."""

    def test_unset_leaves_the_agents_defaults(self) -> None:
        args = agent_container(docs())["args"]
        assert [a for a in args if a in SWARM_FLAGS] == []
        assert agent_config(args).swarm == SwarmSettings()

    def test_set_values_reach_the_agent_config(self) -> None:
        sets = (
            "agent.swarm.maxParents=3",
            "agent.swarm.stallTimeout=40s",
            "agent.swarm.pieceTimeout=1m",
            "agent.swarm.maxPeerLinks=256",
        )
        args = agent_container(docs(*sets))["args"]
        assert [(name, flag(args, name)) for name in SWARM_FLAGS] == [
            ("--max-parents", ["3"]),
            ("--stall-timeout", ["40s"]),
            ("--piece-timeout", ["1m"]),
            ("--max-peer-links", ["256"]),
        ]
        swarm = agent_config(args).swarm
        assert (swarm.max_parents, swarm.stall_timeout, swarm.piece_timeout, swarm.max_peer_links) == (3, 40, 60, 256)

    def test_values_file_numbers(self, tmp_path: Path) -> None:
        values = tmp_path / "values.yaml"
        values.write_text(yaml.safe_dump({"agent": {"swarm": {"maxParents": 4, "maxPeerLinks": 2048}}}))
        rendered = manifest_documents(render(build_values((str(values),), (BASE,))))
        args = agent_container(rendered)["args"]
        assert (flag(args, "--max-parents"), flag(args, "--max-peer-links")) == (["4"], ["2048"])
        assert flag(args, "--stall-timeout") == []


class TestWebhookConfiguration:
    """Two entries (Pod label, namespace label), never blocking, TLS that verifies."""

    def test_entries(self) -> None:
        mwc = find(docs(), "MutatingWebhookConfiguration")
        pod_entry, ns_entry = mwc["webhooks"]
        for entry in (pod_entry, ns_entry):
            assert entry["failurePolicy"] == "Ignore"
            assert entry["timeoutSeconds"] <= 5
            assert entry["sideEffects"] == "None"
            assert entry["admissionReviewVersions"] == ["v1"]
            assert {"operations": ["CREATE"], "resources": ["pods"]}.items() <= entry["rules"][0].items()
        assert pod_entry["clientConfig"]["service"]["path"] == "/mutate"
        assert pod_entry["objectSelector"]["matchLabels"] == {"k8s.aliyun.com/image-accelerate-mode": "p2p"}
        assert ns_entry["clientConfig"]["service"]["path"] == "/mutate/namespace"
        assert ns_entry["namespaceSelector"]["matchLabels"] == {"k8s.aliyun.com/image-accelerate-mode": "p2p"}

    def test_own_pods_are_never_rewritten(self) -> None:
        rendered = docs()
        mwc = find(rendered, "MutatingWebhookConfiguration")
        for entry in mwc["webhooks"]:
            assert {"key": "shoal.io/skip-injection", "operator": "DoesNotExist"} in entry["objectSelector"][
                "matchExpressions"
            ]
        for doc in rendered:
            if doc["kind"] in ("DaemonSet", "Deployment"):
                labels = doc["spec"]["template"]["metadata"]["labels"]
                assert labels["shoal.io/skip-injection"] == "true"

    def test_generated_certificate_verifies_for_the_service(self, tmp_path: Path) -> None:
        rendered = docs()
        tls = find(rendered, "Secret", "-webhook-tls")["data"]
        mwc = find(rendered, "MutatingWebhookConfiguration")
        assert mwc["webhooks"][0]["clientConfig"]["caBundle"] == tls["ca.crt"]
        (tmp_path / "ca.pem").write_bytes(base64.b64decode(tls["ca.crt"]))
        (tmp_path / "tls.pem").write_bytes(base64.b64decode(tls["tls.crt"]))
        result = subprocess.run(
            [
                "openssl",
                "verify",
                "-CAfile",
                str(tmp_path / "ca.pem"),
                "-verify_hostname",
                "shoal-webhook.shoal-system.svc",
                str(tmp_path / "tls.pem"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr + result.stdout

    def test_cert_manager(self) -> None:
        rendered = docs("webhook.certManager.enabled=true")
        certificate = find(rendered, "Certificate")
        assert certificate["spec"]["secretName"] == "shoal-webhook-tls"
        assert "shoal-webhook.shoal-system.svc" in certificate["spec"]["dnsNames"]
        assert find(rendered, "Issuer")["spec"] == {"selfSigned": {}}
        mwc = find(rendered, "MutatingWebhookConfiguration")
        assert mwc["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": "shoal-system/shoal-webhook"}
        assert all("caBundle" not in e["clientConfig"] for e in mwc["webhooks"])
        assert not [d for d in rendered if d["metadata"]["name"] == "shoal-webhook-tls"]


class TestRBAC:
    """The webhook talks to the API server about Secrets and watches labelled Pods; the scheduler
    only checks enrollments."""

    def test_least_privilege(self) -> None:
        rendered = docs()
        role = find(rendered, "ClusterRole", "-webhook")
        assert role["rules"] == [
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "update", "delete"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
        ]
        assert find(rendered, "ClusterRole", "-scheduler")["rules"] == [
            {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
        ]
        namespaced = find(rendered, "Role", "-scheduler")
        assert namespaced["metadata"]["namespace"] == "shoal-system"
        assert namespaced["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]
        assert [d["metadata"]["name"] for d in rendered if d["kind"] in ("Role", "RoleBinding")] == [
            "shoal-scheduler",
            "shoal-scheduler",
        ]
        for component in ("agent", "scheduler"):
            sa = find(rendered, "ServiceAccount", f"-{component}")
            assert sa["automountServiceAccountToken"] is False


class TestInstallCommand:
    """``shoal install --dry-run`` prints manifests; errors are one clear line."""

    def test_dry_run_prints_valid_manifests(self) -> None:
        result = CliRunner().invoke(
            install, ["--dry-run", "--set", BASE, "--namespace", "p2p", "--release-name", "acc"]
        )
        assert result.exit_code == 0, result.output
        rendered = [d for d in yaml.safe_load_all(result.output) if d]
        assert find(rendered, "DaemonSet", "-agent")["metadata"] == {
            **find(rendered, "DaemonSet", "-agent")["metadata"],
            "name": "acc-shoal-agent",
            "namespace": "p2p",
        }

    def test_bad_value_is_reported(self) -> None:
        result = CliRunner().invoke(install, ["--dry-run", "--set", f"{BASE},p2p.port=80"])
        assert result.exit_code == 2
        assert result.output.startswith("Error: invalid value p2p.port:")

    def test_unreachable_cluster_is_reported(self, tmp_path: Path) -> None:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
                    "users": [{"name": "u", "user": {}}],
                    "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "x",
                }
            )
        )
        result = CliRunner().invoke(install, ["--set", BASE, "--kubeconfig", str(kubeconfig)])
        assert result.exit_code != 0
        assert "install failed" in result.output
        assert "unreachable" in result.output
