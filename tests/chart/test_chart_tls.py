"""TLS to the scheduler and per-node identity, on by default: what the chart renders for them."""

from __future__ import annotations

import base64
from typing import Any

from cryptography import x509

from shoal.cli.scheduler import scheduler as scheduler_command
from shoal.scheduler.config import SchedulerConfig

from .test_chart_render import agent_config, agent_container, docs, find, flag

Doc = dict[str, Any]


def scheduler_container(documents: list[Doc]) -> Doc:
    container: Doc = find(documents, "StatefulSet", "-scheduler")["spec"]["template"]["spec"]["containers"][0]
    return container


def volumes(documents: list[Doc], kind: str, suffix: str) -> dict[str, Doc]:
    spec = find(documents, kind, suffix)["spec"]["template"]["spec"]
    return {v["name"]: v for v in spec["volumes"]}


class TestDefaults:
    """The agents enroll with an audience-bound projected token; the scheduler holds the CA key."""

    def test_agent_enrolls_with_a_projected_token(self) -> None:
        rendered = docs()
        container = agent_container(rendered)
        args = container["args"]
        assert flag(args, "--tls-dir") == ["/run/shoal/tls"]
        assert flag(args, "--scheduler-ca") == ["/etc/shoal/ca/ca.crt"]
        assert flag(args, "--enroll-token-file") == ["/var/run/secrets/shoal/token"]
        assert "--insecure-no-tls" not in args
        config = agent_config(args)
        assert all(url.startswith("https://") for url in config.schedulers)
        vols = volumes(rendered, "DaemonSet", "-agent")
        (source,) = vols["enroll-token"]["projected"]["sources"]
        assert source["serviceAccountToken"]["audience"] == "shoal"
        assert vols["tls"]["emptyDir"]["medium"] == "Memory"
        # the CA's certificate only: no agent can issue certificates
        assert vols["ca"]["secret"]["items"] == [{"key": "tls.crt", "path": "ca.crt"}]
        env = {e["name"]: e for e in container["env"]}
        assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
        assert env["SHOAL_SCHEDULER_CA"]["value"] == "/etc/shoal/ca/ca.crt"
        spec = find(rendered, "DaemonSet", "-agent")["spec"]["template"]["spec"]
        assert spec["automountServiceAccountToken"] is False

    def test_scheduler_serves_tls_and_checks_tokens(self) -> None:
        rendered = docs()
        container = scheduler_container(rendered)
        args = container["args"]
        assert flag(args, "--tls-ca-dir") == ["/etc/shoal/ca"]
        assert flag(args, "--agent-service-account") == ["shoal-system:shoal-agent"]
        assert flag(args, "--token-audience") == ["shoal"]
        assert flag(args, "--cert-ttl") == ["24h"]
        assert "*.shoal-scheduler-headless.shoal-system.svc" in flag(args, "--tls-name")
        assert "shoal-scheduler" in flag(args, "--tls-name")
        assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
        vols = volumes(rendered, "StatefulSet", "-scheduler")
        assert vols["ca"]["secret"]["secretName"] == "shoal-ca"
        assert "serviceAccountToken" in vols["api-token"]["projected"]["sources"][0]
        # the rendered flags make a config the scheduler command accepts
        params = scheduler_command.make_context("scheduler", args[1:]).params
        assert params["tls_names"]
        SchedulerConfig(
            tls_names=params["tls_names"], agent_service_account=params["agent_service_account"], peer_token="x"
        )

    def test_generated_ca_is_a_ca(self) -> None:
        secret = find(docs(), "Secret", "-ca")
        assert secret["type"] == "kubernetes.io/tls"
        cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert b"PRIVATE KEY" in base64.b64decode(secret["data"]["tls.key"])


class TestCaSources:
    """The CA can come from the chart, an existing Secret, or cert-manager."""

    def test_existing_secret(self) -> None:
        rendered = docs("tls.ca.existingSecret=my-ca")
        assert not [d for d in rendered if d["kind"] == "Secret" and d["metadata"]["name"] == "shoal-ca"]
        assert volumes(rendered, "StatefulSet", "-scheduler")["ca"]["secret"]["secretName"] == "my-ca"
        assert volumes(rendered, "DaemonSet", "-agent")["ca"]["secret"]["secretName"] == "my-ca"

    def test_cert_manager(self) -> None:
        rendered = docs("tls.ca.certManager.enabled=true")
        certificate = find(rendered, "Certificate", "-ca")
        assert certificate["spec"]["isCA"] is True
        assert certificate["spec"]["secretName"] == "shoal-ca"
        assert (
            certificate["spec"]["issuerRef"]["name"] == find(rendered, "Issuer", "-ca-selfsigned")["metadata"]["name"]
        )
        assert not [d for d in rendered if d["kind"] == "Secret" and d["metadata"]["name"] == "shoal-ca"]

    def test_cert_manager_with_a_cluster_issuer(self) -> None:
        rendered = docs(
            "tls.ca.certManager.enabled=true",
            "tls.ca.certManager.issuerRef.name=corp-ca",
            "tls.ca.certManager.issuerRef.kind=ClusterIssuer",
        )
        ref = find(rendered, "Certificate", "-ca")["spec"]["issuerRef"]
        assert (ref["name"], ref["kind"]) == ("corp-ca", "ClusterIssuer")
        assert not [d for d in rendered if d["kind"] == "Issuer"]


class TestLabOptOut:
    """tls.enabled=false: plain HTTP, said so on both sides, and no CA, RBAC or token volume."""

    def test_disabled(self) -> None:
        rendered = docs("tls.enabled=false")
        args = agent_container(rendered)["args"]
        assert "--insecure-no-tls" in args
        assert flag(args, "--tls-dir") == []
        (urls,) = flag(args, "--scheduler")
        assert urls.startswith("http://")
        assert "--insecure-no-tls" in scheduler_container(rendered)["args"]
        names = {(d["kind"], d["metadata"]["name"]) for d in rendered}
        assert ("Secret", "shoal-ca") not in names
        assert ("ClusterRole", "shoal-scheduler") not in names
        assert "enroll-token" not in volumes(rendered, "DaemonSet", "-agent")
