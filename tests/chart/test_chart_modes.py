"""The two modes, node-config on every node, and the hardening, as the Helm engine renders them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from click.testing import CliRunner

from shoal.cli.main import cli

from .test_chart_render import KUBE_VERSION, NOT_IN_SCHEMAS, docs, find, flag

Doc = dict[str, Any]
REG = "registries=harbor.local:5000"
WEBHOOK_KINDS = {"MutatingWebhookConfiguration", "ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy"}


def pod_spec(documents: list[Doc], kind: str, suffix: str) -> Doc:
    spec: Doc = find(documents, kind, suffix)["spec"]["template"]["spec"]
    return spec


def init(documents: list[Doc], suffix: str = "-agent") -> Doc:
    containers: list[Doc] = pod_spec(documents, "DaemonSet", suffix)["initContainers"]
    (container,) = containers
    assert container["name"] == "node-config"
    return container


@pytest.mark.parametrize(
    "sets",
    [
        ("mode=rewrite",),
        ("mode=mirror",),
        ("mode=rewrite", "p2p.plusMode.nodeSelectorEnable=true", "aliasDomain=p2p.internal"),
        ("mode=mirror", "p2p.plusMode.cacheHostPath=/var/lib/shoal", "webhook.replicas=1"),
    ],
    ids=lambda s: ",".join(s),
)
def test_each_mode_validates(sets: tuple[str, ...]) -> None:
    for doc in docs(REG, *sets):
        if doc["kind"] not in NOT_IN_SCHEMAS:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


class TestModes:
    """mirror: no webhook at all; rewrite: the webhook, and node-config for the alias hosts."""

    def test_mirror_has_no_webhook(self) -> None:
        rendered = docs(REG, "mode=mirror")
        scheduler_rbac = {d["metadata"]["name"] for d in rendered if d["metadata"]["name"].endswith("-scheduler")}
        assert not [
            d
            for d in rendered
            if (d["kind"] in WEBHOOK_KINDS and d["metadata"]["name"] not in scheduler_rbac)
            or "webhook" in d["metadata"]["name"]
        ]
        args = init(rendered)["args"]
        assert flag(args, "--mode") == ["mirror"]

    def test_rewrite(self) -> None:
        rendered = docs(REG, "mode=rewrite", "aliasDomain=p2p.internal")
        agent = pod_spec(rendered, "DaemonSet", "-agent")["containers"][0]["args"]
        webhook = pod_spec(rendered, "Deployment", "-webhook")["containers"][0]["args"]
        node_config = init(rendered)["args"]
        assert flag(node_config, "--mode") == ["rewrite"]
        # one registry list and one alias spelling for the three of them
        assert flag(node_config, "--registry") == flag(agent, "--registry") == ["harbor.local:5000"]
        assert flag(webhook, "--registry") == ["harbor.local:5000"]
        assert flag(node_config, "--alias-domain") == flag(agent, "--alias-domain") == ["p2p.internal"]
        assert flag(webhook, "--alias-domain") == ["p2p.internal"]
        assert flag(webhook, "--p2p-port") == ["65001"]
        assert flag(node_config, "--agent") == ["127.0.0.1:65001"]
        assert "--rewrite-without-pull-secret" not in webhook
        opted_in = docs(REG, "webhook.rewriteWithoutPullSecret=true")
        assert "--rewrite-without-pull-secret" in pod_spec(opted_in, "Deployment", "-webhook")["containers"][0]["args"]

    def test_default_is_the_briefs_rewrite(self) -> None:
        assert flag(init(docs(REG))["args"], "--mode") == ["rewrite"]


class TestNodeConfig:
    """The init container writes exactly the host directories it mounts."""

    def test_the_charts_own_arguments_pass_on_a_good_node(self, tmp_path: Path) -> None:
        """Run node-config with the args the chart renders, on a node tree whose containerd
        has config_path set as the docs say: it must succeed (before: exit 1 on every node,
        so the agent never started in rewrite mode)."""
        args = init(docs(REG))["args"]
        host = tmp_path / "host"
        (host / "etc/containerd").mkdir(parents=True)
        (host / "etc/containerd/config.toml").write_text(
            'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\nconfig_path = "/etc/containerd/certs.d"\n'
        )
        argv = [str(host) if a == "/host" else a for a in args]
        result = CliRunner().invoke(cli, argv)
        assert result.exit_code == 0, result.output
        assert (host / "etc/containerd/certs.d/harbor.local:65001/hosts.toml").is_file()

    def test_paths_and_mounts(self) -> None:
        rendered = docs(REG)
        container = init(rendered)
        args = container["args"]
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod_spec(rendered, "DaemonSet", "-agent")["volumes"]}
        # paths are the node's (what containerd's config_path names), mounted under --host-root
        assert flag(args, "--host-root") == ["/host"]
        assert flag(args, "--containerd-certs-dir") == ["/etc/containerd/certs.d"]
        assert mounts["containerd-certs"]["mountPath"] == "/host/etc/containerd/certs.d"
        assert volumes["containerd-certs"]["hostPath"] == {
            "path": "/etc/containerd/certs.d",
            "type": "DirectoryOrCreate",
        }
        assert flag(args, "--containerd-config") == ["/etc/containerd/config.toml"]
        assert mounts["containerd-config"] == {
            "name": "containerd-config",
            "mountPath": "/host/etc/containerd",
            "readOnly": True,
        }
        assert flag(args, "--registries-conf-dir") == ["/etc/containers/registries.conf.d"]
        assert mounts["registries-conf"]["mountPath"] == "/host/etc/containers/registries.conf.d"
        assert volumes["registries-conf"]["hostPath"]["path"] == "/etc/containers/registries.conf.d"
        assert container["securityContext"]["runAsUser"] == 0
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}

    @pytest.mark.parametrize(
        ("sets", "required"),
        [
            (("mode=rewrite",), True),
            (("mode=mirror",), False),
            (("mode=rewrite", "nodeConfig.requireConfigPath=false"), False),
            (("mode=mirror", "nodeConfig.requireConfigPath=true"), True),
        ],
    )
    def test_require_config_path(self, sets: tuple[str, ...], required: bool) -> None:
        assert ("--require-config-path" in init(docs(REG, *sets))["args"]) is required

    def test_crio_off(self) -> None:
        rendered = docs(REG, "nodeConfig.registriesConfDir=")
        container = init(rendered)
        assert flag(container["args"], "--registries-conf-dir") == [""]
        assert "registries-conf" not in {m["name"] for m in container["volumeMounts"]}

    def test_every_node_gets_the_fallback_in_rewrite_mode(self) -> None:
        """Also the nodes the agent DaemonSet leaves out, however it is narrowed (review
        finding: only nodeSelectorEnable got node-config elsewhere; a narrowed
        agent.nodeSelector or agent.tolerations left nodes with no way back)."""
        for sets in ((), ("p2p.plusMode.nodeSelectorEnable=true",), ("agent.nodeSelector.pool=general",)):
            rendered = docs(REG, *sets)
            spec = pod_spec(rendered, "DaemonSet", "-node-config")
            assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
            assert spec["tolerations"] == [{"operator": "Exists"}]
            assert "affinity" not in spec
            assert flag(init(rendered, "-node-config")["args"], "--mode") == ["rewrite"]
            assert [c["image"] for c in spec["containers"]] == ["registry.k8s.io/pause:3.10"]
            assert spec["automountServiceAccountToken"] is False
        for sets in (("mode=mirror",), ("nodeConfig.everyNode=false",)):
            assert not [d for d in docs(REG, *sets) if d["metadata"]["name"].endswith("-node-config")]


class TestHardening:
    """Pod Security, priority, seccomp, non-root, storage bounds, disruption budget, RBAC."""

    def test_seccomp_everywhere(self) -> None:
        rendered = docs(REG, "p2p.plusMode.nodeSelectorEnable=true")
        for kind, suffix in (("DaemonSet", "-agent"), ("DaemonSet", "-node-config"), ("Deployment", "-webhook")):
            assert pod_spec(rendered, kind, suffix)["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}

    def test_agent_non_root_with_empty_dir(self) -> None:
        spec = pod_spec(docs(REG), "DaemonSet", "-agent")
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 65532
        assert spec["securityContext"]["fsGroup"] == 65532
        agent = spec["containers"][0]
        assert agent["resources"]["requests"]["ephemeral-storage"] == "1Gi"
        cache = next(v for v in spec["volumes"] if v["name"] == "cache")
        assert cache["emptyDir"]["sizeLimit"] == "63Gi"
        sized = pod_spec(docs(REG, "p2p.plusMode.cacheMaxSize=100G"), "DaemonSet", "-agent")
        assert next(v for v in sized["volumes"] if v["name"] == "cache")["emptyDir"]["sizeLimit"] == "125Gi"

    def test_agent_root_only_with_host_path_cache(self) -> None:
        spec = pod_spec(docs(REG, "p2p.plusMode.cacheHostPath=/var/lib/shoal"), "DaemonSet", "-agent")
        assert "runAsNonRoot" not in spec["securityContext"]

    def test_priority_class_installs_on_gke(self) -> None:
        rendered = docs(REG)
        priority = find(rendered, "PriorityClass")
        assert priority["metadata"]["name"] == "shoal-node"
        assert priority["value"] <= 1_000_000_000  # user-defined classes; system-* are refused on GKE
        assert pod_spec(rendered, "DaemonSet", "-agent")["priorityClassName"] == "shoal-node"
        named = docs(REG, "agent.priorityClassName=system-node-critical")
        assert not [d for d in named if d["kind"] == "PriorityClass"]
        assert pod_spec(named, "DaemonSet", "-agent")["priorityClassName"] == "system-node-critical"

    def test_namespace_pod_security(self) -> None:
        assert not [d for d in docs(REG) if d["kind"] == "Namespace"]
        namespace = find(docs(REG, "namespace.create=true"), "Namespace")
        assert namespace["metadata"]["name"] == "shoal-system"
        labels = namespace["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "privileged"  # hostNetwork, hostPath
        assert labels["pod-security.kubernetes.io/warn"] == "baseline"

    def test_webhook_disruption_budget(self) -> None:
        rendered = docs(REG)
        pdb = find(rendered, "PodDisruptionBudget", "-webhook")
        assert pdb["spec"]["maxUnavailable"] == 1
        pod_labels = find(rendered, "Deployment", "-webhook")["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        single = docs(REG, "webhook.replicas=1")
        assert not [d for d in single if d["kind"] == "PodDisruptionBudget" and "webhook" in d["metadata"]["name"]]

    def test_secret_writes_limited_to_derived_secrets(self) -> None:
        rendered = docs(REG)
        policy = find(rendered, "ValidatingAdmissionPolicy")
        binding = find(rendered, "ValidatingAdmissionPolicyBinding")
        assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
        (condition,) = policy["spec"]["matchConditions"]
        account = find(rendered, "Deployment", "-webhook")["spec"]["template"]["spec"]["serviceAccountName"]
        assert condition["expression"] == f'request.userInfo.username == "system:serviceaccount:shoal-system:{account}"'
        (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
        assert rule["resources"] == ["secrets"]
        assert rule["operations"] == ["CREATE", "UPDATE", "DELETE"]
        expressions = " ".join(v["expression"] for v in policy["spec"]["validations"])
        assert expressions.count("shoal.io/derived-pull-secret") == 4
        assert "oldObject" in expressions
        assert "kubernetes.io/dockerconfigjson" in expressions
        unrestricted = docs(REG, "webhook.restrictSecretWrites=false")
        assert not [d for d in unrestricted if "AdmissionPolicy" in d["kind"]]


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("mode=both", "/mode"),
        ("aliasDomain=Bad_Domain", "/aliasDomain"),
        ("priorityClass.value=2000000000", "/priorityClass"),
    ],
)
def test_bad_values_rejected(expression: str, message: str) -> None:
    import helm_python

    from shoal.ops.helm import build_values, render

    with pytest.raises(helm_python.HelmValuesError, match=message):
        render(build_values((), (REG, expression)))


class TestStartupTaint:
    """Off by default; on, a node-ready container with the only API token, own-node RBAC."""

    def test_off_by_default(self) -> None:
        rendered = docs(REG)
        assert [c["name"] for c in pod_spec(rendered, "DaemonSet", "-agent")["containers"]] == ["agent"]
        assert not [d for d in rendered if "node-ready" in d["metadata"]["name"]]

    def test_on(self) -> None:
        rendered = docs(REG, "startupTaint.enabled=true")
        spec = pod_spec(rendered, "DaemonSet", "-agent")
        agent, ready = spec["containers"]
        assert ready["args"] == [
            "node-ready",
            "--taint",
            "k8s.aliyun.com/agent-not-ready",
            "--agent",
            "127.0.0.1:65001",
        ]
        assert ready["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
        assert spec["automountServiceAccountToken"] is False
        assert [m["name"] for m in ready["volumeMounts"]] == ["node-ready-token"]
        assert "node-ready-token" not in {m["name"] for m in agent["volumeMounts"]}  # the agent gets no token
        assert {"key": "k8s.aliyun.com/agent-not-ready", "operator": "Exists", "effect": "NoSchedule"} in spec[
            "tolerations"
        ]
        role = find(rendered, "ClusterRole", "-node-ready")
        assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "update"]}]
        (subject,) = find(rendered, "ClusterRoleBinding", "-node-ready")["subjects"]
        assert subject["name"] == spec["serviceAccountName"]
        policy = find(rendered, "ValidatingAdmissionPolicy", "-node-ready")
        expressions = " ".join(v["expression"] for v in policy["spec"]["validations"])
        assert "authentication.kubernetes.io/node-name" in expressions
        assert "'k8s.aliyun.com/agent-not-ready'" in expressions
        for doc in rendered:
            if doc["kind"] not in NOT_IN_SCHEMAS:
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)

    def test_custom_key(self) -> None:
        rendered = docs(REG, "startupTaint.enabled=true", "startupTaint.key=example.com/not-ready")
        ready = pod_spec(rendered, "DaemonSet", "-agent")["containers"][1]
        assert flag(ready["args"], "--taint") == ["example.com/not-ready"]
