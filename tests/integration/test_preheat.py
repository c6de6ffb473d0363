"""``shoal preheat`` end to end: a scheduler and 5 agents (real processes), a real registry.

The agents announce themselves when they start, so preheat finds them without any pull;
after it every agent holds every blob, the registry served the image once, and a pull
through any agent then costs the registry no blob bytes.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from wire_peer import bitfield_of

from shoal.agent.peer_link import peer_secret
from shoal.demo.fleet import LocalFleet, shoal_argv
from shoal.demo.imagegen import GeneratedImage, generate_image
from shoal.p2p.pieces import choose_piece_size, piece_count
from shoal.p2p.tls import TlsDirectory
from shoal.testing.capture import Flow, Tcpdump, tcp_streams
from shoal.testing.registry import DistributionRegistry
from shoal.testing.skopeo import layout_digests, skopeo_pull

pytestmark = pytest.mark.real

MiB = 1 << 20
REGISTRY = "registry.test"
IMAGE = f"{REGISTRY}/team/app:v1"
USERS = {"alice": "s3cret"}


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> GeneratedImage:
    """4 layers, 16 MiB: several pieces per layer."""
    return generate_image(tmp_path_factory.mktemp("images") / "preheat", size=16 * MiB, layers=4, seed=12)


@dataclass
class Cluster:
    registry: DistributionRegistry
    fleet: LocalFleet
    image: GeneratedImage
    workdir: Path

    @property
    def token(self) -> str:
        return self.fleet.token_file.read_text()

    def get(self, url: str) -> object:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=10, context=self.fleet.scheduler_context()) as resp:
            return json.load(resp)

    def wait_for_agents(self, count: int) -> None:
        """Agents announce at start; the scheduler lists them within a moment."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            listed = self.get(f"{self.fleet.schedulers[0][0]}/v1/agents")
            assert isinstance(listed, dict)
            if len(listed["agents"]) >= count:
                return
            time.sleep(0.1)
        raise AssertionError(f"scheduler lists {listed}")

    def preheat(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = shoal_argv(
            "preheat",
            IMAGE,
            "--scheduler",
            self.fleet.schedulers[0][0],
            "--peer-token-file",
            str(self.fleet.token_file),
            "--ca",
            str(self.fleet.ca_file),
            *args,
        )
        return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)

    def holds(self, node_url: str, digest: str) -> bool:
        """The node says (as a peer would hear it) that it holds every piece of the blob."""
        size = next(b.size for b in self.image.blobs if b.digest == digest)
        address = node_url.removeprefix("http://")
        assert self.fleet.ca is not None  # the prober dials as a node on 127.0.0.1
        prober = TlsDirectory(self.fleet.ca.issue(self.workdir / "prober", "prober", ips=("127.0.0.1",)))
        held = bitfield_of(address, address, peer_secret(self.token.strip()), digest, size, prober)
        return held == piece_count(size, choose_piece_size(size))


def node_network(streams: dict[Flow, bytes], port: int) -> bytes:
    """What crossed the agents' port, less each agent's pulls through its own mirror (a
    request for ``/v2/``: on a node that is loopback, here an agent's 127.0.0.x to itself)."""
    own = {flow for flow, data in streams.items() if flow[3] == port and data.startswith((b"GET /v2/", b"HEAD /v2/"))}
    own |= {(dst, dport, src, sport) for src, sport, dst, dport in own}
    return b"".join(data for flow, data in streams.items() if flow not in own)


@pytest.fixture
def cluster(tmp_path: Path, image: GeneratedImage) -> Iterator[Cluster]:
    with DistributionRegistry(tmp_path / "registry", users=USERS) as reg:
        reg.push(image, "team/app", "v1")
        with LocalFleet(tmp_path / "fleet", nodes=5, registries={REGISTRY: reg.url}) as fleet:
            c = Cluster(reg, fleet, image, tmp_path)
            c.wait_for_agents(5)
            yield c


class TestPreheat:
    """Preheat warms every node through the swarm: the registry serves each blob once."""

    def test_every_node_holds_the_image_and_later_pulls_cost_no_blob_bytes(self, cluster: Cluster) -> None:
        reg, image = cluster.registry, cluster.image
        mark = reg.mark()
        done = cluster.preheat("--creds", "alice:s3cret")
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"5/5 nodes hold {IMAGE}" in done.stdout
        for node in cluster.fleet.nodes:
            assert all(cluster.holds(node.url, b.digest) for b in image.blobs), node.address
        served = reg.blob_bytes_served(mark)
        assert served == image.blob_bytes, f"origin served {served / image.blob_bytes:.2f}x the image"

        mark = reg.mark()
        for node in cluster.fleet.nodes:
            out = cluster.workdir / f"pulled-{node.index}"
            result = skopeo_pull(f"{node.address}/{IMAGE}", out, creds="alice:s3cret")
            assert result.returncode == 0, result.stderr
            assert layout_digests(out) >= {b.digest for b in image.blobs}
        assert reg.blob_bytes_served(mark) == 0

    def test_no_secret_crosses_the_network_in_clear(self, cluster: Cluster) -> None:
        """Issue 16: preheat sent the peer token and the registry credentials to every agent
        in clear. A capture of the agents' port during a preheat holds neither."""
        port = int(cluster.fleet.nodes[0].address.rpartition(":")[2])
        capture = cluster.workdir / "preheat.pcap"
        with Tcpdump("lo", f"tcp port {port}", capture) as tcpdump:
            done = cluster.preheat("--creds", "alice:s3cret", "--nodes", "2")
        assert done.returncode == 0, done.stdout + done.stderr
        assert tcpdump.dropped == 0, "the capture is not complete"
        wire = node_network(tcp_streams(capture), port)
        assert b"\x16\x03" in wire, "no TLS on the agents' port"
        assert cluster.token.strip().encode() not in wire
        assert base64.b64encode(b"alice:s3cret") not in wire
        assert b"s3cret" not in wire

    def test_a_count_of_nodes_warms_only_that_many(self, cluster: Cluster) -> None:
        done = cluster.preheat("--creds", "alice:s3cret", "--nodes", "2", "--json")
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert summary["ok"] is True
        warmed = {n["address"] for n in summary["nodes"]}
        assert len(warmed) == 2
        layer = max(cluster.image.blobs, key=lambda b: b.size).digest
        for node in cluster.fleet.nodes:
            assert cluster.holds(node.url, layer) == (node.address in warmed)

    def test_a_list_of_nodes_and_an_unknown_node(self, cluster: Cluster) -> None:
        target = cluster.fleet.nodes[3]
        done = cluster.preheat("--creds", "alice:s3cret", "--nodes", target.address)
        assert done.returncode == 0, done.stderr
        assert "1/1 nodes hold" in done.stdout
        assert cluster.holds(target.url, cluster.image.blobs[0].digest)
        unknown = cluster.preheat("--creds", "alice:s3cret", "--nodes", "10.9.9.9:1")
        assert unknown.returncode == 2
        assert "no agent 10.9.9.9:1" in unknown.stderr

    def test_wrong_credentials_fail_every_node_and_the_exit_status(self, cluster: Cluster) -> None:
        done = cluster.preheat("--creds", "alice:wrong")
        assert done.returncode == 1
        assert "0/5 nodes hold" in done.stdout
        assert done.stdout.count("FAILED") == 5
        assert "401" in done.stdout

    def test_credentials_from_a_docker_config_file(self, cluster: Cluster) -> None:
        authfile = cluster.workdir / "config.json"
        auth = base64.b64encode(b"alice:s3cret").decode()
        authfile.write_text(json.dumps({"auths": {f"https://{REGISTRY}": {"auth": auth}}}))
        done = cluster.preheat("--authfile", str(authfile), "--nodes", "1")
        assert done.returncode == 0, done.stdout + done.stderr
