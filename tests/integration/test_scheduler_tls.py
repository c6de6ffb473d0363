"""A real ``shoal scheduler`` over TLS 1.3 with a (fake) Kubernetes API: agents enroll with their
projected ServiceAccount tokens and act only as their own node."""

from __future__ import annotations

import datetime
import http.client
import os
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from shoal.agent.enrollment import EnrollmentError, NodeEnrollment
from shoal.demo.fleet import shoal_argv, wait_healthy
from shoal.ops.helm import build_values, manifest_documents, render
from shoal.p2p.enrollment import SchedulerTls
from shoal.p2p.presence import AgentAnnouncement
from shoal.p2p.protocol import JoinRequest
from shoal.p2p.scheduler_client import SchedulerClient, SchedulerRejected
from shoal.p2p.tls import CA_FILE, CERT_FILE, KEY_FILE
from shoal.scheduler.ca import write_new_ca
from shoal.testing.fake_apiserver import FakeApiServer
from shoal.testing.procs import ManagedProcess, free_port, require, wait_until

NS, SA, AUDIENCE = "shoal", "shoal-agent", "shoal"
PEER_TOKEN = "lab-peer-token"
D = "sha256:" + "d" * 64
MiB = 1 << 20


def pod(name: str, node: str, account: str = SA) -> dict[str, Any]:
    return {
        "metadata": {"namespace": NS, "name": name},
        "spec": {"nodeName": node, "serviceAccountName": account, "containers": [{"name": "agent", "image": "shoal"}]},
    }


def node(name: str, ip: str, zone: str = "") -> dict[str, Any]:
    labels = {"topology.kubernetes.io/zone": zone} if zone else {}
    return {
        "metadata": {"name": name, "labels": labels},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
    }


@dataclass
class Cluster:
    api: FakeApiServer
    url: str
    ca_file: Path
    log: Path
    work: Path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    work = tmp_path_factory.mktemp("tls")
    api = FakeApiServer().start()
    api.put_node(node("node-a", "10.0.0.1"))
    api.put_node(node("node-b", "10.0.0.2"))
    api.put_node(node("node-z", "10.0.0.26", zone="eu-1a"))
    pod_a = api.put_pod(pod("agent-a", "node-a"))
    pod_b = api.put_pod(pod("agent-b", "node-b"))
    pod_z = api.put_pod(pod("agent-z", "node-z"))
    other = api.put_pod(pod("intruder", "node-b", account="default"))
    api.add_token("token-a", f"{NS}:{SA}", pod_a, [AUDIENCE])
    api.add_token("token-b", f"{NS}:{SA}", pod_b, [AUDIENCE])
    api.add_token("token-z", f"{NS}:{SA}", pod_z, [AUDIENCE])
    api.add_token("token-other-account", f"{NS}:default", other, [AUDIENCE])
    api.add_token("token-expired", f"{NS}:{SA}", pod_a, [AUDIENCE], expires_in=-1)
    api.add_token("token-for-the-api", f"{NS}:{SA}", pod_a, ["https://kubernetes.default.svc"])
    ca_file = write_new_ca(work / "ca")
    (work / "peer-token").write_text(PEER_TOKEN)
    port = free_port()
    log = work / "scheduler.log"
    proc = ManagedProcess(
        shoal_argv(
            "scheduler",
            "--listen",
            f"127.0.0.1:{port}",
            "--peer-token-file",
            str(work / "peer-token"),
            "--tls-ca-dir",
            str(work / "ca"),
            "--agent-service-account",
            f"{NS}:{SA}",
            "--kubeconfig",
            str(api.write_kubeconfig(work / "kubeconfig")),
            "--cert-ttl",
            "1h",
        ),
        stdout=log,
    )
    url = f"https://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, context=ssl.create_default_context(cafile=str(ca_file)))
        yield Cluster(api, url, ca_file, log, work)
    finally:
        proc.stop()
        api.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def enrollment(
    cluster: Cluster, session: aiohttp.ClientSession, tls_dir: Path, token: str, name: str, ips: tuple[str, ...]
) -> NodeEnrollment:
    return NodeEnrollment(tls_dir, [cluster.url], SchedulerTls(cluster.ca_file), lambda: token, name, ips, session)


def node_client(cluster: Cluster, session: aiohttp.ClientSession, tls_dir: Path) -> SchedulerClient:
    tls = SchedulerTls(tls_dir / CA_FILE, tls_dir / CERT_FILE, tls_dir / KEY_FILE)
    return SchedulerClient(session, [cluster.url], None, tls=tls)


def leaf(tls_dir: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((tls_dir / CERT_FILE).read_bytes())


class TestEnrollment:
    """A projected token gets its own node's certificate, and nothing else."""

    async def test_a_token_gets_its_nodes_certificate(
        self, cluster: Cluster, session: aiohttp.ClientSession, tmp_path: Path
    ) -> None:
        due = await enrollment(cluster, session, tmp_path, "token-a", "node-a", ("10.0.0.1",)).enroll_once()
        cert = leaf(tmp_path)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node-a"
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(ip) for ip in alt.get_values_for_type(x509.IPAddress)] == ["10.0.0.1"]
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert datetime.timedelta(hours=1) <= lifetime <= datetime.timedelta(hours=1, minutes=6)
        assert due == cert.not_valid_before_utc + lifetime * 2 / 3
        assert oct((tmp_path / KEY_FILE).stat().st_mode & 0o777) == "0o600"
        assert (tmp_path / CA_FILE).read_bytes() == cluster.ca_file.read_bytes()

    @pytest.mark.parametrize(
        ("token", "name", "ips", "why"),
        [
            ("token-a", "node-b", ("10.0.0.2",), "this caller is node 'node-a'"),
            ("token-a", "node-a", ("10.0.0.1", "10.0.0.2"), "addresses 10.0.0.2"),
            ("token-other-account", "node-b", ("10.0.0.2",), "not the agents' ServiceAccount"),
            ("token-expired", "node-a", ("10.0.0.1",), "expired"),
            ("token-for-the-api", "node-a", ("10.0.0.1",), "audiences is invalid"),
            ("forged", "node-a", ("10.0.0.1",), "invalid bearer token"),
        ],
    )
    async def test_refused(
        self,
        cluster: Cluster,
        session: aiohttp.ClientSession,
        tmp_path: Path,
        token: str,
        name: str,
        ips: tuple[str, ...],
        why: str,
    ) -> None:
        with pytest.raises(EnrollmentError, match=why):
            await enrollment(cluster, session, tmp_path, token, name, ips).enroll_once()
        assert not (tmp_path / CERT_FILE).exists()

    async def test_the_nodes_zone_label_is_in_its_certificate(
        self, cluster: Cluster, session: aiohttp.ClientSession, tmp_path: Path
    ) -> None:
        await enrollment(cluster, session, tmp_path, "token-z", "node-z", ("10.0.0.26",)).enroll_once()
        alt = leaf(tmp_path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert alt.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:shoal:zone:eu-1a"]
        unzoned = tmp_path / "a"
        await enrollment(cluster, session, unzoned, "token-a", "node-a", ("10.0.0.1",)).enroll_once()
        alt = leaf(unzoned).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert alt.get_values_for_type(x509.UniformResourceIdentifier) == []

    async def test_a_deleted_pods_token_is_refused(
        self, cluster: Cluster, session: aiohttp.ClientSession, tmp_path: Path
    ) -> None:
        gone = cluster.api.put_pod(pod("agent-gone", "node-a"))
        cluster.api.add_token("token-gone", f"{NS}:{SA}", gone, [AUDIENCE])
        cluster.api.remove_pod(NS, "agent-gone")
        with pytest.raises(EnrollmentError, match="no longer exists"):
            await enrollment(cluster, session, tmp_path, "token-gone", "node-a", ("10.0.0.1",)).enroll_once()

    async def test_renewal_needs_no_restart(
        self, cluster: Cluster, session: aiohttp.ClientSession, tmp_path: Path
    ) -> None:
        enroll = enrollment(cluster, session, tmp_path, "token-a", "node-a", ("10.0.0.1",))
        await enroll.enroll_once()
        client = node_client(cluster, session, tmp_path)
        me = AgentAnnouncement(peer_id="10.0.0.1:65001", address="10.0.0.1:65001", node="node-a")
        assert await client.announce(me) == {cluster.url: None}
        first = leaf(tmp_path).serial_number
        await enroll.enroll_once()
        assert leaf(tmp_path).serial_number != first
        assert await client.announce(me) == {cluster.url: None}  # the same client, the new certificate


class TestActingAsItself:
    """Over mutual TLS a node joins, reports and announces only under its own addresses."""

    async def test_node_a_cannot_act_as_node_b(
        self, cluster: Cluster, session: aiohttp.ClientSession, tmp_path: Path
    ) -> None:
        await enrollment(cluster, session, tmp_path, "token-a", "node-a", ("10.0.0.1",)).enroll_once()
        client = node_client(cluster, session, tmp_path)
        as_b = AgentAnnouncement(peer_id="10.0.0.2:65001", address="10.0.0.2:65001", node="node-b")
        (error,) = (await client.announce(as_b)).values()
        assert error is not None
        assert "403" in error
        assert "node-a" in error
        named_b = AgentAnnouncement(peer_id="10.0.0.1:65001", address="10.0.0.1:65001", node="node-b")
        (error,) = (await client.announce(named_b)).values()
        assert error is not None
        assert "403" in error
        with pytest.raises(SchedulerRejected) as refused:
            await client.join(D, JoinRequest("10.0.0.2:65001", "10.0.0.2:65001", 4 * MiB, MiB))
        assert refused.value.status == 403
        with pytest.raises(SchedulerRejected):
            await client.join(D, JoinRequest("10.0.0.2:65001", "10.0.0.1:65001", 4 * MiB, MiB))
        view = await client.join(D, JoinRequest("10.0.0.1:65001", "10.0.0.1:65001", 4 * MiB, MiB))
        assert view.role == "fetcher"

    async def test_one_node_is_not_a_crowd(
        self, cluster: Cluster, session: aiohttp.ClientSession, tmp_path: Path
    ) -> None:
        await enrollment(cluster, session, tmp_path, "token-b", "node-b", ("10.0.0.2",)).enroll_once()
        client = node_client(cluster, session, tmp_path)
        digest = "sha256:" + "f" * 64
        for port in (1, 2):
            peer = f"10.0.0.2:{port}"
            await client.join(digest, JoinRequest(peer, peer, 4 * MiB, MiB))
        with pytest.raises(SchedulerRejected, match="at most 2 peer ids") as refused:
            await client.join(digest, JoinRequest("10.0.0.2:3", "10.0.0.2:3", 4 * MiB, MiB))
        assert refused.value.status == 403
        crowd = AgentAnnouncement(peer_id="10.0.0.2:4", address="10.0.0.2:4", node="node-b")
        (error,) = (await client.announce(crowd)).values()
        assert error is not None
        assert "at most 2 peer ids" in error

    async def test_the_peer_token_reads_but_cannot_act_as_a_node(
        self, cluster: Cluster, session: aiohttp.ClientSession
    ) -> None:
        context = ssl.create_default_context(cafile=str(cluster.ca_file))
        headers = {"Authorization": f"Bearer {PEER_TOKEN}"}
        async with session.get(f"{cluster.url}/v1/agents", ssl=context, headers=headers) as resp:
            assert resp.status == 200
        body = {"peer_id": "10.0.0.1:65001", "address": "10.0.0.1:65001", "size": MiB, "piece_size": MiB}
        async with session.post(f"{cluster.url}/v1/tasks/{D}/join", json=body, ssl=context, headers=headers) as resp:
            assert resp.status == 401
        async with session.get(f"{cluster.url}/v1/agents", ssl=context) as resp:
            assert resp.status == 401

    def test_plain_http_is_refused(self, cluster: Cluster) -> None:
        plain = cluster.url.replace("https://", "http://")
        with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):
            urllib.request.urlopen(f"{plain}/v1/agents", timeout=5)

    def test_a_client_that_trusts_another_ca_refuses_the_scheduler(self, cluster: Cluster, tmp_path: Path) -> None:
        other = write_new_ca(tmp_path / "other")
        context = ssl.create_default_context(cafile=str(other))
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(f"{cluster.url}/healthz", timeout=5, context=context)


class TestRBAC:
    """The chart grants the scheduler exactly the API calls enrollment makes."""

    async def test_granted_verbs_are_the_used_ones(
        self, cluster: Cluster, session: aiohttp.ClientSession, tmp_path: Path
    ) -> None:
        await enrollment(cluster, session, tmp_path, "token-b", "node-b", ("10.0.0.2",)).enroll_once()
        used = set()
        for method, path in cluster.api.requests:
            if path.startswith("/apis/authentication.k8s.io/v1/tokenreviews"):
                used.add(("ClusterRole", "tokenreviews", "create" if method == "POST" else method))
            elif path.startswith("/api/v1/nodes/"):
                used.add(("ClusterRole", "nodes", "get" if method == "GET" else method))
            elif path.startswith(f"/api/v1/namespaces/{NS}/pods/"):
                used.add(("Role", "pods", "get" if method == "GET" else method))
            else:
                used.add(("?", path, method))
        rendered = manifest_documents(render(build_values((), ("registries=registry.example.com",))))
        granted = {
            (doc["kind"], resource, verb)
            for doc in rendered
            if doc["kind"] in ("ClusterRole", "Role") and doc["metadata"]["name"].endswith("-scheduler")
            for rule in doc["rules"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        }
        assert used == granted


class TestDemo:
    """``shoal demo`` runs with TLS by default: the scheduler issues each agent its certificate."""

    def test_agents_enroll_and_share(self, tmp_path: Path) -> None:
        argv = shoal_argv("demo", "--nodes", "2", "--size", "4M", "--layers", "1", "--workdir", str(tmp_path))
        done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert "1.00x the image" in done.stdout
        for i in range(2):
            cert = leaf(tmp_path / "fleet" / f"node-{i}" / "tls")
            alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert [str(ip) for ip in alt.get_values_for_type(x509.IPAddress)] == [f"127.0.0.{i + 2}"]
        log = (tmp_path / "fleet" / "scheduler-0.log").read_text()
        assert log.count("issued a certificate to node") >= 2
        assert "INSECURE" not in log


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace of our own with only loopback: a capture there sees the demo alone."""
    name = f"shoal-idcap-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def captured_demo(netns: str, workdir: Path, *flags: str) -> tuple[bytes, bytes]:
    """(every byte that crossed the namespace's network during ``shoal demo``, its peer token)."""
    capture = workdir / "capture.pcap"
    tcpdump = ManagedProcess(
        ["ip", "netns", "exec", netns, require("tcpdump"), "-i", "lo", "-U", "-s", "0", "-w", str(capture)],
        stdout=workdir / "tcpdump.log",
    )
    try:
        wait_until(
            lambda: "listening" in (workdir / "tcpdump.log").read_text(), what="tcpdump listening", process=tcpdump
        )
        argv = ["ip", "netns", "exec", netns, *shoal_argv("demo", "--nodes", "2", "--size", "4M", "--layers", "1")]
        argv += ["--workdir", str(workdir / "demo"), *flags]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    finally:
        tcpdump.stop()
    return capture.read_bytes(), (workdir / "demo" / "fleet" / "peer-token").read_bytes().strip()


class TestCapture:
    """What a listener on the node network sees of the calls to the scheduler: no secret with TLS
    (the peer token appears in the same capture without it, so the capture does see them)."""

    def test_no_secret_on_the_wire_with_tls(self, netns: str, tmp_path: Path) -> None:
        (tmp_path / "tls").mkdir()
        (tmp_path / "plain").mkdir()
        with_tls, token = captured_demo(netns, tmp_path / "tls")
        without, plain_token = captured_demo(netns, tmp_path / "plain", "--insecure-no-tls")
        assert len(with_tls) > 1_000_000  # the layers crossed this capture
        assert plain_token in without
        assert token not in with_tls
