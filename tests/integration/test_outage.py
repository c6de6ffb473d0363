"""Registry outages with real processes: a private docker-registry (htpasswd), killed, then
replaced by a socket that accepts and never answers, or behind a front that makes it slow; a
scheduler and three agents.

Times are printed (``-s``) as ``OUTAGE-TIME <what>: <seconds>`` lines.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shoal.demo.fleet import LocalFleet, scrape, shoal_argv
from shoal.demo.imagegen import GeneratedImage, generate_image
from shoal.demo.procs import ManagedProcess
from shoal.nodeconfig.ready import agent_ready
from shoal.testing.capture import Tcpdump, tcp_streams
from shoal.testing.procs import free_port, wait_until
from shoal.testing.registry import DistributionRegistry
from shoal.testing.skopeo import layout_digests, skopeo_pull

pytestmark = pytest.mark.real

MiB = 1 << 20
REG = "registry.test"
USERS = {"alice": "s3cret", "bob": "hunter2"}
CREDS = "alice:s3cret"
BOB = "bob:hunter2"
WRONG = "alice:guess"
MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
REGISTRY_TIMEOUT = 2.0
PROBE_INTERVAL = 1.0


def report(what: str, seconds: float) -> None:
    print(f"OUTAGE-TIME {what}: {seconds:.3f}s")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> GeneratedImage:
    return generate_image(tmp_path_factory.mktemp("images") / "outage", size=8 * MiB, layers=3, seed=41)


@pytest.fixture(scope="module")
def moved(tmp_path_factory: pytest.TempPathFactory) -> GeneratedImage:
    return generate_image(tmp_path_factory.mktemp("images") / "moved", size=2 * MiB, layers=1, seed=42)


def digests_of(image: GeneratedImage) -> set[str]:
    return {b.digest for b in [*image.manifests, *image.blobs]}


class HungRegistry:
    """A socket on the registry's address that accepts connections and never answers."""

    def __init__(self, host: str) -> None:
        addr, port = host.rsplit(":", 1)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, int(port)))
        self.sock.listen(128)

    def close(self) -> None:
        self.sock.close()


class SlowFront:
    """A TCP proxy in front of the registry that holds every request ``delay`` seconds before
    passing it on, so the registry's answers come that much later (it runs its own loop in a
    thread: the fixtures block theirs)."""

    def __init__(self) -> None:
        self.upstream: list[str] = []
        """host and port of the registry"""
        self.delay = 0.0
        self.writers: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[object]] = set()
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), name="slow-front", daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        ready.set()
        self.loop.run_forever()

    async def _shutdown(self) -> None:
        self.server.close()
        for writer in self.writers:
            writer.close()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.writers.add(client_w)
        try:
            await self._relay(client_r, client_w)
        finally:
            self.tasks.discard(task)
            self.writers.discard(client_w)
            client_w.close()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            reg_r, reg_w = await asyncio.open_connection(self.upstream[0], int(self.upstream[1]))
        except OSError:
            return
        self.writers.add(reg_w)
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def receive() -> None:
            while data := await client_r.read(65536):
                held.put_nowait((time.monotonic() + self.delay, data))
            held.put_nowait((0.0, b""))

        async def forward() -> None:
            while True:
                due, data = await held.get()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if not data:
                    reg_w.write_eof()
                    return
                reg_w.write(data)
                await reg_w.drain()

        async def answer() -> None:
            while data := await reg_r.read(65536):
                client_w.write(data)
                await client_w.drain()
            client_w.close()

        try:
            async with asyncio.TaskGroup() as group:
                for step in (receive(), forward(), answer()):
                    group.create_task(step)
        except* (OSError, ConnectionError):
            pass  # either side went away: so does the other
        finally:
            self.writers.discard(reg_w)
            reg_w.close()
            with contextlib.suppress(OSError, ConnectionError):
                await reg_w.wait_closed()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Cluster:
    workdir: Path
    registry: DistributionRegistry
    fleet: LocalFleet
    host: str

    def url(self, node: int) -> str:
        return self.fleet.nodes[node].url

    def ref(self, node: int, repo_tag: str) -> str:
        return f"{self.fleet.nodes[node].address}/{REG}/{repo_tag}"

    async def pull(self, node: int, repo_tag: str, dest: str, creds: str | None = CREDS) -> tuple[float, set[str]]:
        started = time.monotonic()
        result = await asyncio.to_thread(skopeo_pull, self.ref(node, repo_tag), self.workdir / dest, creds=creds)
        took = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        return took, layout_digests(self.workdir / dest)

    def kill_registry(self) -> None:
        self.registry.stop()

    def restart_agent(self, node: int) -> None:
        """Kill an agent by PID and start it again on the same cache and address."""
        fleet_node = self.fleet.nodes[node]
        argv = fleet_node.process.argv
        self.fleet.kill(node)
        fleet_node.process = ManagedProcess([*argv], stdout=self.workdir / f"node-{node}-restarted.log")
        wait_until(lambda: agent_ready(fleet_node.address, timeout=1), timeout=20, what="restarted agent healthy")
        wait_until(lambda: _listed(self.fleet) == 3, timeout=30, what="restarted agent announced")

    def registry_back(self) -> DistributionRegistry:
        self.registry = DistributionRegistry(self.workdir / "registry", users=USERS, addr=self.host).start()
        return self.registry


def _listed(fleet: LocalFleet) -> int:
    request = urllib.request.Request(
        f"{fleet.schedulers[0][0]}/v1/agents", headers={"Authorization": f"Bearer {fleet.token_file.read_text()}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=3, context=fleet.scheduler_context()) as resp:
            return len(json.loads(resp.read())["agents"])
    except OSError:
        return 0


@pytest.fixture
def cluster(tmp_path: Path, image: GeneratedImage) -> Iterator[Cluster]:
    """A private registry holding team/app:v1, three agents that node 0 pulled it through."""
    with _cluster(tmp_path, image) as c:
        yield c


@contextlib.contextmanager
def _cluster(tmp_path: Path, image: GeneratedImage, front: SlowFront | None = None) -> Iterator[Cluster]:
    host = f"127.0.0.1:{free_port()}"
    registry = DistributionRegistry(tmp_path / "registry", users=USERS, addr=host).start()
    c: Cluster | None = None
    try:
        registry.push(image, "team/app", "v1")
        if front is not None:
            front.upstream = host.rsplit(":", 1)
        url = registry.url if front is None else f"http://{front.host}"
        args = (
            "--registry-timeout",
            f"{REGISTRY_TIMEOUT:g}s",
            "--outage-probe-interval",
            f"{PROBE_INTERVAL:g}s",
        )
        with LocalFleet(tmp_path / "fleet", nodes=3, registries={REG: url}, agent_args=args) as fleet:
            wait_until(lambda: _listed(fleet) == 3, timeout=30, what="three agents announced")
            c = Cluster(tmp_path, registry, fleet, host)
            result = skopeo_pull(c.ref(0, "team/app:v1"), tmp_path / "warm", creds=CREDS)
            assert result.returncode == 0, result.stderr
            yield c
    finally:
        registry.stop()
        if c is not None:
            c.registry.stop()  # the one started when the registry came back


async def get(
    session: aiohttp.ClientSession, url: str, creds: str | None = CREDS, method: str = "GET"
) -> tuple[int, dict[str, str], bytes, float]:
    headers = {"Accept": MANIFEST_ACCEPT}
    if creds is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(creds.encode()).decode()
    started = time.monotonic()
    async with session.request(method, url, headers=headers) as resp:
        body = await resp.read()
        return resp.status, dict(resp.headers), body, time.monotonic() - started


def outage_status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/p2p/v1/outage", timeout=5) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


class TestRegistryDown:
    """The registry killed: held images keep being pulled, by confirmed credentials only."""

    async def test_restarted_agent_serves_the_image_by_tag(self, cluster: Cluster, image: GeneratedImage) -> None:
        cluster.kill_registry()
        await asyncio.to_thread(cluster.restart_agent, 0)
        took, digests = await cluster.pull(0, "team/app:v1", "after-restart")
        report("stale pull, restarted agent (registry refused)", took)
        assert digests == digests_of(image)
        async with aiohttp.ClientSession() as session:
            status, headers, _, _ = await get(session, f"{cluster.url(0)}/v2/{REG}/team/app/manifests/v1")
        assert status == 200
        assert headers.get("Warning", "").startswith("110 ")
        metrics = scrape(cluster.url(0))
        assert metrics.get("shoal_agent_stale_responses_total{kind=manifest}", 0) >= 1
        assert metrics.get(f"shoal_agent_registry_down{{registry={REG}}}") == 1
        listed = outage_status(cluster.url(0))
        assert listed["registries"][REG]["down"] is True
        assert listed["registries"][REG]["cause"] == "connection refused"
        assert [s["image"] for s in listed["stale"]] == [f"{REG}/team/app:v1"]
        argv = shoal_argv("status", "--agent", cluster.url(0), "--json")
        done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=60, check=False)
        fallbacks = next(c for c in json.loads(done.stdout)["checks"] if c["name"] == "fallbacks")
        assert fallbacks["status"] == "warn"
        assert any(d.startswith(f"stale: {REG}/team/app:v1 (sha256:") for d in fallbacks["details"]), fallbacks
        assert any(d.startswith(f"registry {REG} down for") for d in fallbacks["details"]), fallbacks

    async def test_agent_that_never_pulled_it_gets_it_from_the_cluster(
        self, cluster: Cluster, image: GeneratedImage
    ) -> None:
        cluster.kill_registry()
        took, digests = await cluster.pull(1, "team/app:v1", "cold")
        report("cold-node pull from peers (registry refused)", took)
        assert digests == digests_of(image)
        assert scrape(cluster.url(1)).get("shoal_agent_stale_responses_total{kind=blob}", 0) >= len(image.blobs)
        layer = max(image.blobs, key=lambda b: b.size)
        async with aiohttp.ClientSession() as session:
            status, headers, body, _ = await get(session, f"{cluster.url(1)}/v2/{REG}/team/app/blobs/{layer.digest}")
        assert status == 200
        assert headers.get("Warning", "").startswith("110 ")
        assert body == image.blob_path(layer.digest).read_bytes()

    async def test_a_digest_pinned_pull_with_evidence_only_at_a_peer(
        self, cluster: Cluster, image: GeneratedImage
    ) -> None:
        """Node 1 holds the manifest (alice pulled it there from the cluster); bob was
        confirmed only on node 0: node 1 asks it, and bob's pull by digest goes through."""
        await cluster.pull(0, "team/app:v1", "bob-warm", creds=BOB)
        cluster.kill_registry()
        await cluster.pull(1, "team/app:v1", "alice-cold")
        _, digests = await cluster.pull(1, f"team/app@{image.top_digest}", "bob-pinned", creds=BOB)
        assert digests == digests_of(image)

    async def test_wrong_or_unknown_credentials_get_nothing(self, cluster: Cluster, image: GeneratedImage) -> None:
        cluster.kill_registry()
        layer = max(image.blobs, key=lambda b: b.size)
        async with aiohttp.ClientSession() as session:
            for node in (0, 1):  # the node that holds it, and one that would ask its peers
                base = f"{cluster.url(node)}/v2/{REG}/team/app"
                status, headers, body, _ = await get(session, f"{base}/manifests/v1", creds=WRONG)
                assert status == 403, body
                assert json.loads(body)["errors"][0]["code"] == "DENIED"
                status, headers, body, _ = await get(session, f"{base}/manifests/v1", creds=None)
                assert status == 401, body
                assert "WWW-Authenticate" in headers
                for creds, refused in ((WRONG, 403), (None, 401)):
                    status, _, body, _ = await get(session, f"{base}/blobs/{layer.digest}", creds=creds)
                    # node 0 holds the blob; node 1 does not, and its peers refuse these credentials
                    assert status == refused, (node, status, body)
                    assert len(body) < 4096
                    error = json.loads(body)["errors"][0]
                    assert error["code"] == ("DENIED" if refused == 403 else "UNAUTHORIZED")
                    assert "connection refused" in error["message"]
            unheld = "sha256:" + "ab" * 32  # nobody holds it: the registry's own error
            status, _, body, _ = await get(session, f"{cluster.url(1)}/v2/{REG}/team/app/blobs/{unheld}")
            assert status == 502, body
            error = json.loads(body)["errors"][0]
            assert error["code"] == "UPSTREAM_UNAVAILABLE"
            assert REG in error["message"]
            assert "connection refused" in error["message"]
        for creds, dest in ((WRONG, "wrong"), (None, "anonymous")):
            result = await asyncio.to_thread(
                skopeo_pull, cluster.ref(1, "team/app:v1"), cluster.workdir / dest, creds=creds
            )
            assert result.returncode != 0
            assert not any(d in layout_digests(cluster.workdir / dest) for d in digests_of(image))

    async def test_uncached_image_fails_fast_with_an_oci_error(self, cluster: Cluster) -> None:
        cluster.kill_registry()
        async with aiohttp.ClientSession() as session:
            status, _, body, took = await get(session, f"{cluster.url(1)}/v2/{REG}/team/other/manifests/v1")
            report("uncached image error (registry refused)", took)
            assert status == 502
            assert took < 1.0
            error = json.loads(body)["errors"][0]
            assert error["code"] == "UPSTREAM_UNAVAILABLE"
            assert REG in error["message"]
            assert "connection refused" in error["message"]
            assert "Error(" not in error["message"]
            hung = HungRegistry(cluster.host)
            try:
                # nothing held can stand in: the agent keeps waiting for the registry, as a direct
                # pull would, rather than failing after registry_timeout
                url = f"{cluster.url(2)}/v2/{REG}/team/other/manifests/v1"
                patience = aiohttp.ClientTimeout(total=REGISTRY_TIMEOUT + 1.5)
                with pytest.raises(TimeoutError):
                    async with session.get(url, headers={"Accept": MANIFEST_ACCEPT}, timeout=patience) as resp:
                        pytest.fail(f"answered {resp.status} while the registry was still silent")
            finally:
                hung.close()
            status, _, _, _ = await get(session, f"{cluster.url(2)}/healthz", creds=None)
            assert status == 200


class TestHeldContentOverTls:
    """Issue 16: during an outage nodes asked each other for manifests and blobs in clear,
    with the peer token. With node certificates a cold node gets them over TLS: a capture of
    the node network (the agents' port, less the pull client's connection to its node)
    holds no manifest, no window of a layer, no token. And only a node can ask."""

    async def test_a_capture_of_a_cold_pull_from_peers(
        self, cluster: Cluster, image: GeneratedImage, tmp_path: Path
    ) -> None:
        cluster.kill_registry()
        cold = cluster.fleet.nodes[1].address.rpartition(":")
        port = int(cold[2])
        capture = tmp_path / "outage.pcap"
        with Tcpdump("lo", f"tcp port {port}", capture) as tcpdump:
            _, digests = await cluster.pull(1, "team/app:v1", "cold-tls")
        assert digests == digests_of(image)
        assert tcpdump.dropped == 0, "the capture is not complete"
        client = ("127.0.0.1", cold[0])  # the pull client and the node it pulls through
        wire = b"".join(
            data for flow, data in tcp_streams(capture).items() if (flow[0], flow[2]) not in (client, client[::-1])
        )
        assert len(wire) > image.blob_bytes // 2, "the image did not cross the node network"
        token = cluster.fleet.token_file.read_text().strip().encode()
        assert token not in wire
        for manifest in image.manifests:
            data = image.blob_path(manifest.digest).read_bytes()
            assert data not in wire
            assert base64.b64encode(data) not in wire
        layer = image.blob_path(max(image.blobs, key=lambda b: b.size).digest).read_bytes()
        windows = [layer[at : at + 4096] for at in range(0, len(layer) - 4096, 1 << 20)]
        assert not [w for w in windows if w in wire]

    async def test_only_a_node_reads_held_content(self, cluster: Cluster, tmp_path: Path) -> None:
        from shoal.p2p.node_https import NodeHttps, agent_client_context

        fleet = cluster.fleet
        assert fleet.ca is not None
        address = fleet.nodes[0].address
        url = f"https://{address}/p2p/v1/held/manifest?registry={REG}&repository=team/app&reference=v1&fp=x"
        token = {"Authorization": f"Bearer {fleet.token_file.read_text().strip()}"}
        async with aiohttp.ClientSession() as session:
            async with session.get(url, ssl=agent_client_context(fleet.ca_file), headers=token) as resp:
                assert resp.status == 403  # the token does not make a person's client a node
                assert "a node certificate is required" in await resp.text()
            elsewhere = NodeHttps(fleet.ca.issue(tmp_path / "elsewhere", "elsewhere", ips=("127.0.0.9",)))
            async with session.get(url, ssl=elsewhere.client_context()) as resp:
                assert resp.status == 403  # a node's certificate, but not of the address calling
                assert "does not name 127.0.0.1" in await resp.text()
            async with session.get(url.replace("https:", "http:"), headers=token) as resp:
                assert resp.status == 403
                assert "TLS only" in await resp.text()
            local = NodeHttps(fleet.ca.issue(tmp_path / "local", "local", ips=("127.0.0.1",)))
            async with session.get(url, ssl=local.client_context()) as resp:
                assert resp.status == 403  # a node: let in, and refused only for want of evidence
                assert "no confirmation of these credentials" in await resp.text()


class TestRegistryBack:
    """A registry that refused comes back: its first answer wins, no probe interval to wait."""

    async def test_moved_tag_served_at_once(
        self, cluster: Cluster, image: GeneratedImage, moved: GeneratedImage
    ) -> None:
        cluster.kill_registry()
        url = f"{cluster.url(0)}/v2/{REG}/team/app/manifests/v1"
        async with aiohttp.ClientSession() as session:
            status, headers, _, _ = await get(session, url)
            assert status == 200
            assert headers["Docker-Content-Digest"] == image.top_digest
            assert "Warning" in headers
            registry = await asyncio.to_thread(cluster.registry_back)
            await asyncio.to_thread(registry.push, moved, "team/app", "v1")
            status, headers, _, _ = await get(session, url)
        assert status == 200
        assert headers["Docker-Content-Digest"] == moved.top_digest
        assert "Warning" not in headers
        assert scrape(cluster.url(0)).get(f"shoal_agent_registry_down{{registry={REG}}}") == 0


@pytest.fixture
def slow_front() -> Iterator[SlowFront]:
    front = SlowFront()
    try:
        yield front
    finally:
        front.close()


@pytest.fixture
def slow_cluster(tmp_path: Path, image: GeneratedImage, slow_front: SlowFront) -> Iterator[Cluster]:
    """``cluster``, with the agents asking the registry through ``slow_front`` (not slow yet)."""
    with _cluster(tmp_path, image, slow_front) as c:
        yield c


class TestSlowRegistry:
    """A registry slower than registry_timeout is waited for when nothing held can stand in
    (a direct pull would succeed); held content is served after one bounded wait."""

    async def test_never_held_image_waits_for_it_held_image_is_served_stale(
        self, slow_cluster: Cluster, slow_front: SlowFront, moved: GeneratedImage, image: GeneratedImage
    ) -> None:
        await asyncio.to_thread(slow_cluster.registry.push, moved, "team/other", "v1")
        slow_front.delay = REGISTRY_TIMEOUT + 2.0
        took, digests = await slow_cluster.pull(1, "team/other:v1", "slow-never-held")
        report(f"pull of an image nobody holds, registry {slow_front.delay:g}s slow", took)
        assert digests == digests_of(moved)
        assert took >= slow_front.delay
        took, digests = await slow_cluster.pull(0, "team/app:v1", "slow-held")
        report(f"stale pull of a held image, registry {slow_front.delay:g}s slow", took)
        assert digests == digests_of(image)
        assert took < REGISTRY_TIMEOUT + 1.5  # one bounded wait, then what is held
        assert scrape(slow_cluster.url(0)).get("shoal_agent_stale_responses_total{kind=manifest}", 0) >= 1
        listed = outage_status(slow_cluster.url(0))
        assert listed["registries"][REG]["cause"] == f"no answer within {REGISTRY_TIMEOUT:g}s"
        # node 0 marked the registry hung; node 1 holds team/other, but not for bob: nothing
        # may stand in, so bob's request still goes to the registry, whose answer wins
        async with aiohttp.ClientSession() as session:
            url = f"{slow_cluster.url(0)}/v2/{REG}/team/other/manifests/v1"
            status, headers, _, took = await get(session, url, creds=BOB)
        report(
            f"manifest nobody holds for these credentials, registry marked hung and {slow_front.delay:g}s slow", took
        )
        assert status == 200
        assert headers["Docker-Content-Digest"] == moved.top_digest
        assert "Warning" not in headers
        assert took >= slow_front.delay


class TestHungRegistry:
    """A registry that accepts and never answers costs one bounded wait; back, it wins at once."""

    async def test_hung_then_back_with_a_moved_tag(
        self, cluster: Cluster, image: GeneratedImage, moved: GeneratedImage
    ) -> None:
        cluster.kill_registry()
        hung = HungRegistry(cluster.host)
        try:
            took, digests = await cluster.pull(2, "team/app:v1", "hung-cold")
            report("cold-node pull, hung registry (includes the one bounded wait)", took)
            assert digests == digests_of(image)
            assert took < REGISTRY_TIMEOUT + 10.0
            took, digests = await cluster.pull(2, "team/app:v1", "hung-again")
            report("stale pull, hung registry already marked down on this node", took)
            assert digests == digests_of(image)
            assert took < 1.5  # no second wait
            took, digests = await cluster.pull(0, "team/app:v1", "hung-warm")
            report("stale pull, hung registry first seen by this node (one bounded wait)", took)
            assert digests == digests_of(image)
        finally:
            hung.close()
        registry = await asyncio.to_thread(cluster.registry_back)
        registry.push(moved, "team/app", "v1")
        await asyncio.sleep(PROBE_INTERVAL + 0.5)  # the prober finds it answering again
        async with aiohttp.ClientSession() as session:
            status, headers, _, _ = await get(session, f"{cluster.url(0)}/v2/{REG}/team/app/manifests/v1")
        assert status == 200
        assert headers["Docker-Content-Digest"] == moved.top_digest
        assert "Warning" not in headers
        _, digests = await cluster.pull(0, "team/app:v1", "moved")
        assert digests == digests_of(moved)


class TestContainerdContentStore:
    """Blobs containerd 1.6 already holds (``ctr pull``) are served from its content store,
    checked against their digests, under the same access rule, also during an outage."""

    async def test_served_verified_and_during_an_outage(self, tmp_path: Path, image: GeneratedImage) -> None:
        from shoal.testing.containerd import Containerd, write_hosts_toml

        host = f"127.0.0.1:{free_port()}"
        registry = DistributionRegistry(tmp_path / "registry", users=USERS, addr=host).start()
        try:
            registry.push(image, "team/app", "v1")
            with Containerd(tmp_path / "containerd") as ctrd:
                ctrd.pull_direct(registry.ref("team/app", "v1"), user=CREDS)
                content = ctrd.root / "io.containerd.content.v1.content"
                layers = sorted(image.blobs, key=lambda b: b.size)
                assert {b.digest for b in layers} <= ctrd.content_digests()
                bad = layers[-1]  # the biggest layer, corrupted in containerd's store
                path = content / "blobs" / "sha256" / bad.digest.removeprefix("sha256:")
                path.chmod(0o644)
                path.write_bytes(b"\0" * bad.size)
                with LocalFleet(
                    tmp_path / "fleet",
                    nodes=1,
                    registries={REG: registry.url},
                    download_pattern="source",
                    agent_args=("--containerd-content-dir", str(content)),
                ) as fleet:
                    node = fleet.nodes[0]
                    ref = f"{node.address}/{REG}/team/app:v1"
                    mark = registry.mark()
                    first = await asyncio.to_thread(skopeo_pull, ref, tmp_path / "first", creds=CREDS)
                    if first.returncode == 0:  # the corrupt copy was cut off, never completed
                        assert layout_digests(tmp_path / "first") == digests_of(image)
                    await asyncio.sleep(1.0)  # the refetch of the corrupt layer lands
                    again = await asyncio.to_thread(skopeo_pull, ref, tmp_path / "again", creds=CREDS)
                    assert again.returncode == 0, again.stderr
                    assert layout_digests(tmp_path / "again") == digests_of(image)
                    # only the corrupted layer came from the registry; the rest from containerd
                    assert registry.blob_bytes_by_digest(mark) == {bad.digest: bad.size}
                    metrics = scrape(node.url)
                    assert metrics.get("shoal_agent_digest_mismatches_total{source=swarm}", 0) >= 1
                    # an outage, and the blobs have left Shoal's cache: containerd's copies serve
                    registry.stop()
                    argv = node.process.argv
                    fleet.kill(0)
                    for blob in (node.cache_dir / "blobs").rglob("*"):
                        if blob.is_file() and bad.digest.removeprefix("sha256:") not in blob.name:
                            blob.unlink()
                    node.process = ManagedProcess([*argv], stdout=tmp_path / "restarted.log")
                    wait_until(lambda: agent_ready(node.address, timeout=1), timeout=20, what="restarted agent healthy")
                    started = time.monotonic()
                    stale = await asyncio.to_thread(skopeo_pull, ref, tmp_path / "stale", creds=CREDS)
                    report("stale pull from containerd's content store (registry refused)", time.monotonic() - started)
                    assert stale.returncode == 0, stale.stderr
                    assert layout_digests(tmp_path / "stale") == digests_of(image)
                    wrong = await asyncio.to_thread(skopeo_pull, ref, tmp_path / "wrong", creds=WRONG)
                    assert wrong.returncode != 0
                    # the runtime itself, through the agent as its mirror (it resolves the tag with
                    # a HEAD): its content store emptied first, the registry still down
                    ctrd.forget()
                    hosts = write_hosts_toml(tmp_path / "hosts", REG, mirrors=[node.url], server=f"http://{host}")
                    started = time.monotonic()
                    await asyncio.to_thread(ctrd.pull, f"{REG}/team/app:v1", hosts_dir=hosts.parent.parent, user=CREDS)
                    report("ctr pull through the agent (registry refused)", time.monotonic() - started)
                    assert ctrd.unpacked(f"{REG}/team/app:v1")
        finally:
            registry.stop()
