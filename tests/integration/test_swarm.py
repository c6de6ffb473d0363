"""The swarm, end to end: separate agent processes on 127.0.0.x, a real scheduler process,
a real registry (or the built-in origin when a test needs a slow one), real clients."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.demo.fleet import LocalFleet, scrape
from shoal.demo.imagegen import GeneratedImage, generate_image
from shoal.demo.origin import DemoOrigin
from shoal.demo.puller import pull_image
from shoal.p2p.tls import TlsDirectory
from shoal.testing.registry import DistributionRegistry
from shoal.testing.skopeo import layout_digests, skopeo_pull

pytestmark = pytest.mark.real

MiB = 1 << 20
REGISTRY = "registry.test"


def metric(url: str, prefix: str) -> float:
    return sum(v for k, v in scrape(url).items() if k.startswith(prefix))


@pytest.fixture(scope="module")
def rollout_image(tmp_path_factory: pytest.TempPathFactory) -> GeneratedImage:
    """4 layers, 24 MiB: several pieces per layer (pieces are 1 MiB at this size)."""
    return generate_image(tmp_path_factory.mktemp("images") / "rollout", size=24 * MiB, layers=4, seed=7)


@pytest.fixture(scope="module")
def slow_image(tmp_path_factory: pytest.TempPathFactory) -> GeneratedImage:
    """One 16 MiB layer: served at 4 MiB/s by the slow origin, it takes the fetcher ~4 s."""
    return generate_image(tmp_path_factory.mktemp("images") / "slow", size=16 * MiB, layers=1, seed=8)


def _rollout_through_fleet(tmp_path: Path, image: GeneratedImage, nodes: int) -> None:
    with DistributionRegistry(tmp_path / "registry") as reg:
        reg.push(image, "team/app", "v1")
        mark = reg.mark()
        with LocalFleet(tmp_path / "fleet", nodes=nodes, registries={REGISTRY: reg.url}) as fleet:

            async def pull_all() -> list[object]:
                return await asyncio.gather(
                    *(
                        asyncio.to_thread(
                            skopeo_pull,
                            f"{node.address}/{REGISTRY}/team/app:v1",
                            tmp_path / f"out-{node.index}",
                            timeout=600,
                        )
                        for node in fleet.nodes
                    )
                )

            results = asyncio.run(pull_all())
            for node, result in zip(fleet.nodes, results, strict=True):
                assert getattr(result, "returncode", 1) == 0, f"node {node.index}: {getattr(result, 'stderr', '')}"
                assert layout_digests(tmp_path / f"out-{node.index}") >= {b.digest for b in image.blobs}
            peer_bytes = sum(metric(n.url, "shoal_agent_peer_bytes_total{direction=download") for n in fleet.nodes)
        served = reg.blob_bytes_served(mark)
    assert served == image.blob_bytes, f"origin served {served / image.blob_bytes:.2f}x the image"
    if nodes > 1:
        assert peer_bytes >= (nodes - 1) * image.blob_bytes * 0.5


class TestRollout:
    """N simultaneous pulls through N agents cost the registry exactly one copy of the image."""

    def test_ten_nodes(self, tmp_path: Path, rollout_image: GeneratedImage) -> None:
        _rollout_through_fleet(tmp_path, rollout_image, 10)

    def test_two_nodes(self, tmp_path: Path, rollout_image: GeneratedImage) -> None:
        _rollout_through_fleet(tmp_path, rollout_image, 2)

    @pytest.mark.slow
    def test_twenty_five_nodes(self, tmp_path: Path, rollout_image: GeneratedImage) -> None:
        _rollout_through_fleet(tmp_path, rollout_image, 25)


@pytest.fixture
def slow_origin_fleet(tmp_path: Path, slow_image: GeneratedImage) -> Iterator[tuple[DemoOrigin, str, Path]]:
    """The built-in origin capped at 4 MiB/s (so a blob takes seconds), started per test."""
    origin = DemoOrigin({"team/slow": slow_image}, upload_rate=4 * MiB)
    loop = asyncio.new_event_loop()
    url = loop.run_until_complete(origin.start())
    import threading

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield origin, url, tmp_path
    finally:
        asyncio.run_coroutine_threadsafe(origin.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


class TestPipelining:
    """A child streams pieces of a blob its parent is still fetching from the origin."""

    async def test_child_gets_bytes_before_the_fetcher_is_done(
        self, slow_origin_fleet: tuple[DemoOrigin, str, Path], slow_image: GeneratedImage
    ) -> None:
        origin, url, tmp = slow_origin_fleet
        fleet = LocalFleet(tmp / "fleet", nodes=2, registries={REGISTRY: url})
        await asyncio.to_thread(fleet.start)
        try:
            first_byte: dict[int, float] = {}
            done: dict[int, float] = {}
            t0 = time.monotonic()

            async def pull(i: int, delay: float) -> None:
                await asyncio.sleep(delay)

                def seen(_: int) -> None:
                    first_byte.setdefault(i, time.monotonic() - t0)

                await pull_image(fleet.nodes[i].url, f"{REGISTRY}/team/slow", "latest", progress=seen)
                done[i] = time.monotonic() - t0

            await asyncio.gather(pull(0, 0.0), pull(1, 0.5))
        finally:
            await asyncio.to_thread(fleet.stop)
        # node 1 got its first bytes while node 0 (the fetcher) was still downloading
        assert first_byte[1] < done[0] - 1.0, (first_byte, done)
        # and finished right behind it, not a whole origin download later
        assert done[1] - done[0] < 2.0, done
        assert origin.blob_bytes_served == slow_image.blob_bytes


class TestFailures:
    """Dead fetchers, dead schedulers and lying peers cost time, never a pull."""

    async def test_fetcher_killed_mid_blob(
        self, slow_origin_fleet: tuple[DemoOrigin, str, Path], slow_image: GeneratedImage
    ) -> None:
        origin, url, tmp = slow_origin_fleet
        fleet = LocalFleet(tmp / "fleet", nodes=4, registries={REGISTRY: url})
        await asyncio.to_thread(fleet.start)
        try:
            first = asyncio.create_task(pull_image(fleet.nodes[0].url, f"{REGISTRY}/team/slow", "latest"))
            await asyncio.sleep(0.5)
            others = [
                asyncio.create_task(pull_image(n.url, f"{REGISTRY}/team/slow", "latest")) for n in fleet.nodes[1:]
            ]
            # node 0 asked first, so it holds the origin lease; kill it a third of the way in
            while origin.blob_bytes_served < slow_image.blob_bytes // 3:
                await asyncio.sleep(0.05)
            await asyncio.to_thread(fleet.kill, 0)
            with pytest.raises(Exception):  # noqa: B017,PT011 - the killed node's client just sees a broken pull
                await first
            results = await asyncio.gather(*others)
            assert all(r.blob_bytes == slow_image.blob_bytes for r in results)
        finally:
            await asyncio.to_thread(fleet.stop)
        assert origin.blob_bytes_served < 2 * slow_image.blob_bytes, origin.blob_bytes_served

    async def test_fetcher_that_lost_its_lease_stops_fetching(
        self, slow_origin_fleet: tuple[DemoOrigin, str, Path], slow_image: GeneratedImage
    ) -> None:
        """A fetcher frozen past the lease TTL (a CPU-starved node) loses the lease; when it
        thaws it learns of the new holder and stops its own origin fetch: the registry does
        not serve the rest of the blob twice."""
        origin, url, tmp = slow_origin_fleet
        fleet = LocalFleet(
            tmp / "fleet",
            nodes=2,
            registries={REGISTRY: url},
            scheduler_args=("--lease-ttl", "1", "--stall-timeout", "2"),
        )
        layer = max(slow_image.blobs, key=lambda b: b.size).digest
        await asyncio.to_thread(fleet.start)
        try:
            pulls = [
                asyncio.create_task(pull_image(fleet.nodes[0].url, f"{REGISTRY}/team/slow", "latest")),
                asyncio.create_task(pull_image(fleet.nodes[1].url, f"{REGISTRY}/team/slow", "latest")),
            ]
            while origin.blob_bytes_served < slow_image.blob_bytes // 4:
                await asyncio.sleep(0.05)
            logs = [tmp / "fleet" / f"node-{i}.log" for i in (0, 1)]
            fetcher = next(i for i in (0, 1) if f"origin fetcher for {layer}" in logs[i].read_text())
            frozen = fleet.nodes[fetcher].process.pid
            assert frozen is not None
            os.kill(frozen, signal.SIGSTOP)
            await asyncio.sleep(2.5)  # the other node reports meanwhile and takes the lease
            os.kill(frozen, signal.SIGCONT)
            results = await asyncio.gather(*pulls)
            assert all(r.blob_bytes == slow_image.blob_bytes for r in results)
        finally:
            await asyncio.to_thread(fleet.stop)
        thawed = logs[fetcher].read_text()
        assert "stopping our origin fetch" in thawed
        assert f"origin fetcher for {layer}" in logs[1 - fetcher].read_text()
        # the thawed node finished the layer from its new parent, not from the registry
        summary = next(line for line in thawed.splitlines() if f"swarm {layer}:" in line)
        assert "no origin fetch; from parents: 127.0.0." in summary, summary
        # (the registry counts bytes it wrote into the frozen node's socket buffers, hence < 2x)
        assert origin.blob_bytes_served < 2 * slow_image.blob_bytes, origin.blob_bytes_served

    async def test_a_stalled_swarm_goes_to_the_origin_a_few_at_a_time(
        self, slow_origin_fleet: tuple[DemoOrigin, str, Path], slow_image: GeneratedImage
    ) -> None:
        """Overload without stampede: the fetcher freezes (a CPU-starved node) and keeps its
        lease, so every child stalls at once. Only the blob's one fallback lease goes to the
        registry; the other children are told to wait, and get the blob from the swarm. Before
        fallback leases each stalled child fetched the rest itself: 4 more copies here."""
        origin, url, tmp = slow_origin_fleet
        fleet = LocalFleet(
            tmp / "fleet",
            nodes=5,
            registries={REGISTRY: url},
            agent_args=("--stall-timeout", "2"),
            scheduler_args=("--lease-ttl", "120", "--stall-timeout", "120", "--fallback-leases", "1"),
        )
        layer = max(slow_image.blobs, key=lambda b: b.size)
        await asyncio.to_thread(fleet.start)
        frozen: int | None = None
        try:
            first = asyncio.create_task(pull_image(fleet.nodes[0].url, f"{REGISTRY}/team/slow", "latest"))
            await asyncio.sleep(0.5)
            others = [
                asyncio.create_task(pull_image(n.url, f"{REGISTRY}/team/slow", "latest")) for n in fleet.nodes[1:]
            ]
            while origin.blob_bytes_served < slow_image.blob_bytes // 4:
                await asyncio.sleep(0.05)
            logs = [tmp / "fleet" / f"node-{i}.log" for i in range(5)]
            fetcher = next(i for i in range(5) if f"origin fetcher for {layer.digest}" in logs[i].read_text())
            frozen = fleet.nodes[fetcher].process.pid
            os.kill(frozen, signal.SIGSTOP)
            waiting = [t for i, t in enumerate([first, *others]) if i != fetcher]
            results = await asyncio.wait_for(asyncio.gather(*waiting), 120)
            served = origin.blob_bytes_served
            assert all(r.blob_bytes == slow_image.blob_bytes for r in results)
            refused = sum(
                metric(n.url, "shoal_agent_fallbacks_refused_total") for i, n in enumerate(fleet.nodes) if i != fetcher
            )
        finally:
            if frozen is not None:
                os.kill(frozen, signal.SIGCONT)
            await asyncio.to_thread(fleet.stop)
        assert refused >= 1, "no child was told to wait"
        # the frozen fetcher's part, then one fallback fetch of the rest (not one per child)
        assert served < 2 * slow_image.blob_bytes, served / slow_image.blob_bytes

    async def test_scheduler_killed_mid_rollout(
        self, slow_origin_fleet: tuple[DemoOrigin, str, Path], slow_image: GeneratedImage
    ) -> None:
        _, url, tmp = slow_origin_fleet
        fleet = LocalFleet(tmp / "fleet", nodes=3, registries={REGISTRY: url})
        await asyncio.to_thread(fleet.start)
        try:
            pulls = [asyncio.create_task(pull_image(n.url, f"{REGISTRY}/team/slow", "latest")) for n in fleet.nodes]
            await asyncio.sleep(1.0)
            await asyncio.to_thread(fleet.kill_scheduler)
            results = await asyncio.gather(*pulls)
        finally:
            await asyncio.to_thread(fleet.stop)
        assert all(r.blob_bytes == slow_image.blob_bytes for r in results)

    async def test_restarted_scheduler_learns_hashes_from_seeds(
        self, tmp_path: Path, rollout_image: GeneratedImage
    ) -> None:
        """State is soft: after a scheduler restart, complete peers re-announce with their piece
        hashes, so the next node pulls from them and the origin still serves the image once."""
        origin = DemoOrigin({"team/app": rollout_image})
        url = await origin.start()
        fleet = LocalFleet(tmp_path / "fleet", nodes=2, registries={REGISTRY: url})
        await asyncio.to_thread(fleet.start)
        try:
            await pull_image(fleet.nodes[0].url, f"{REGISTRY}/team/app", "latest")
            await asyncio.to_thread(fleet.restart_scheduler)
            await asyncio.sleep(12)  # one seed announcement round (every 10 s)
            await pull_image(fleet.nodes[1].url, f"{REGISTRY}/team/app", "latest")
            from_peers = metric(fleet.nodes[1].url, "shoal_agent_peer_bytes_total{direction=download")
        finally:
            await asyncio.to_thread(fleet.stop)
            await origin.stop()
        assert origin.blob_bytes_served == rollout_image.blob_bytes
        assert from_peers >= rollout_image.blob_bytes - 2 * MiB  # all but the tiny config blob

    def test_source_mode_needs_no_scheduler(self, tmp_path: Path, rollout_image: GeneratedImage) -> None:
        with DistributionRegistry(tmp_path / "registry") as reg:
            reg.push(rollout_image, "team/app", "v1")
            mark = reg.mark()
            with LocalFleet(
                tmp_path / "fleet", nodes=2, registries={REGISTRY: reg.url}, download_pattern="source"
            ) as fleet:
                assert fleet.schedulers == []
                for node in fleet.nodes:
                    result = skopeo_pull(f"{node.address}/{REGISTRY}/team/app:v1", tmp_path / f"o{node.index}")
                    assert result.returncode == 0, result.stderr
            # each node is a plain mirror: each fetched the image once
            assert reg.blob_bytes_served(mark) == 2 * rollout_image.blob_bytes


class TestPeerSecret:
    """Peers and the scheduler refuse callers without the shared token."""

    def test_unauthenticated_calls_are_refused(self, tmp_path: Path) -> None:
        from shoal.agent.peer_link import LinkError, dial, peer_secret

        with LocalFleet(tmp_path / "fleet", nodes=1, registries={REGISTRY: "http://127.0.0.1:9"}) as fleet:
            digest = "sha256:" + "a" * 64
            node = fleet.nodes[0].address
            assert fleet.ca is not None  # a caller with a node certificate but not the token
            tls = TlsDirectory(fleet.ca.issue(tmp_path / "caller", "caller", ips=("127.0.0.1",))).client_context()
            for secret in (peer_secret(None), peer_secret("not-the-token")):
                with pytest.raises(LinkError, match="authentication"):
                    dial(node, node, "127.0.0.1:1", secret, 5.0, "127.0.0.1", tls)
            with pytest.raises(LinkError):  # nor without a certificate, in clear
                dial(node, node, "127.0.0.1:1", peer_secret(fleet.token_file.read_text().strip()), 5.0)
            targets = [
                ("POST", f"{fleet.schedulers[0][0]}/v1/tasks/{digest}/join"),
                ("GET", f"{fleet.schedulers[0][0]}/v1/tasks/{digest}/hashes"),
            ]
            for method, target in targets:
                request = urllib.request.Request(target, method=method, data=b"{}" if method == "POST" else None)
                with pytest.raises(urllib.error.HTTPError) as info:  # over TLS, without a node certificate
                    urllib.request.urlopen(request, timeout=5, context=fleet.scheduler_context())
                info.value.close()
                assert info.value.code == 401, target


class TestLyingPeer:
    """A peer that sends corrupted pieces is caught by the piece hashes, dropped, and avoided."""

    async def test_corrupt_pieces_are_detected_and_avoided(self, tmp_path: Path, rollout_image: GeneratedImage) -> None:
        import os

        import aiohttp
        from wire_peer import WirePeer

        from shoal.p2p.pieces import choose_piece_size, piece_count, piece_span
        from shoal.p2p.protocol import Report, bearer, to_json

        origin = DemoOrigin({"team/app": rollout_image})
        url = await origin.start()
        fleet = LocalFleet(tmp_path / "fleet", nodes=3, registries={REGISTRY: url})
        await asyncio.to_thread(fleet.start)
        token = fleet.token_file.read_text()
        sizes = {b.digest: b.size for b in rollout_image.blobs}

        def random_body(digest: str, index: int) -> bytes:
            return os.urandom(piece_span(index, sizes[digest], choose_piece_size(sizes[digest]))[1])

        counts = {d: piece_count(size, choose_piece_size(size)) for d, size in sizes.items()}
        assert fleet.ca is not None  # the liar is a compromised node: a valid certificate for its address
        identity = TlsDirectory(fleet.ca.issue(tmp_path / "liar", "liar", ips=("127.0.0.90",)))
        peer = WirePeer("127.0.0.90", token, counts, random_body, tls=identity)
        liar = await peer.start()
        lies = peer.requests
        try:
            # node 0 fetches from the origin and publishes every piece hash
            await pull_image(fleet.nodes[0].url, f"{REGISTRY}/team/app", "latest")
            # the liar claims to hold every blob, complete
            # the liar talks to the scheduler as the node its certificate names
            connector = aiohttp.TCPConnector(ssl=identity.client_context())
            async with aiohttp.ClientSession(connector=connector) as session:
                for digest, size in sizes.items():
                    ps = choose_piece_size(size)
                    report = Report(liar, liar, piece_count(size, ps), size, complete=True, size=size, piece_size=ps)
                    async with session.post(
                        f"{fleet.schedulers[0][0]}/v1/tasks/{digest}/report",
                        json=to_json(report),
                        headers=bearer(token),
                    ) as resp:
                        assert resp.status == 200, await resp.text()
            results = await asyncio.gather(
                *(pull_image(n.url, f"{REGISTRY}/team/app", "latest") for n in fleet.nodes[1:])
            )
            assert all(r.blob_bytes == rollout_image.blob_bytes for r in results)
            mismatches = sum(metric(n.url, "shoal_agent_digest_mismatches_total{source=peer") for n in fleet.nodes[1:])
        finally:
            await asyncio.to_thread(fleet.stop)
            await peer.stop()
            await origin.stop()
        assert lies, "the liar was never asked for a piece"
        assert mismatches >= 1
        # a node avoids the liar for every blob after its first bad piece: what it still got asked is
        # what was already in flight then, at most one piece per (node, blob, lane) of 2 x 5 x 2
        assert len(lies) <= 2 * len(sizes) * 2
        # and most of the 2 x 24 pieces came from honest parents
        assert len(lies) < 2 * 24 / 2
        assert origin.blob_bytes_served == rollout_image.blob_bytes


class TestLyingLeaseHolder:
    """Trust defect 6: a peer that holds a blob's lease publishes piece hashes of its own
    garbage and serves that garbage. Every piece checks out, the whole blob does not: the
    agent cuts the stream it cannot complete, reports and avoids the liar, fetches the blob
    again from the origin, and the client's retry gets the right image."""

    async def test_whole_blob_mismatch_goes_back_to_the_origin(
        self, tmp_path: Path, rollout_image: GeneratedImage
    ) -> None:
        import contextlib
        import hashlib

        import aiohttp
        from wire_peer import WirePeer

        from shoal.demo.puller import PullError
        from shoal.p2p.pieces import choose_piece_size, piece_count, piece_span
        from shoal.p2p.protocol import JoinRequest, Report, bearer, to_json

        def garbage(digest: str, index: int, length: int) -> bytes:
            seed = hashlib.sha256(f"{digest}/{index}".encode()).digest()
            return (seed * (length // len(seed) + 1))[:length]

        origin = DemoOrigin({"team/app": rollout_image})
        url = await origin.start()
        fleet = LocalFleet(tmp_path / "fleet", nodes=2, registries={REGISTRY: url})
        await asyncio.to_thread(fleet.start)
        token = fleet.token_file.read_text()
        scheduler = fleet.schedulers[0][0]
        sizes = {b.digest: b.size for b in rollout_image.blobs}

        def lie(digest: str, index: int) -> bytes:
            return garbage(digest, index, piece_span(index, sizes[digest], choose_piece_size(sizes[digest]))[1])

        counts = {d: piece_count(size, choose_piece_size(size)) for d, size in sizes.items()}
        assert fleet.ca is not None  # the liar is a compromised node: a valid certificate for its address
        identity = TlsDirectory(fleet.ca.issue(tmp_path / "liar", "liar", ips=("127.0.0.91",)))
        peer = WirePeer("127.0.0.91", token, counts, lie, tls=identity)
        liar = await peer.start()

        async def claim(session: aiohttp.ClientSession) -> set[str]:
            """Report as the holder of every blob; the digests whose lease the liar holds."""
            held = set()
            for digest, size in sizes.items():
                ps = choose_piece_size(size)
                count = piece_count(size, ps)
                hashes = {
                    i: hashlib.sha256(garbage(digest, i, piece_span(i, size, ps)[1])).hexdigest() for i in range(count)
                }
                report = Report(liar, liar, count, size, hashes=hashes, size=size, piece_size=ps)
                async with session.post(
                    f"{scheduler}/v1/tasks/{digest}/report", json=to_json(report), headers=bearer(token)
                ) as resp:
                    if resp.status == 200 and (await resp.json())["role"] == "fetcher":
                        held.add(digest)
            return held

        async def hold_the_leases(session: aiohttp.ClientSession) -> None:
            while True:
                await claim(session)
                await asyncio.sleep(1.0)

        try:
            # the liar talks to the scheduler as the node its certificate names
            connector = aiohttp.TCPConnector(ssl=identity.client_context())
            async with aiohttp.ClientSession(connector=connector) as session:
                for digest, size in sizes.items():  # the liar is first: it takes every lease
                    join = JoinRequest(liar, liar, size, choose_piece_size(size))
                    async with session.post(
                        f"{scheduler}/v1/tasks/{digest}/join", json=to_json(join), headers=bearer(token)
                    ) as resp:
                        assert resp.status == 200, await resp.text()
                deadline = time.monotonic() + 10
                while await claim(session) != set(sizes):  # one lease a second (leases are spread)
                    assert time.monotonic() < deadline, "the liar did not get every lease"
                    await asyncio.sleep(0.3)
                liar_task = asyncio.create_task(hold_the_leases(session))
                try:
                    node = fleet.nodes[0]
                    result = None
                    for _ in range(5):  # the first tries are cut: their bytes were the liar's
                        with contextlib.suppress(PullError, aiohttp.ClientError):
                            result = await pull_image(node.url, f"{REGISTRY}/team/app", "latest")
                            break
                        await asyncio.sleep(0.5)
                    assert result is not None, "the pull never succeeded"
                    assert result.blob_bytes == rollout_image.blob_bytes
                    mismatches = metric(node.url, "shoal_agent_digest_mismatches_total{source=swarm")
                finally:
                    liar_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await liar_task
        finally:
            await asyncio.to_thread(fleet.stop)
            await peer.stop()
            await origin.stop()
        assert mismatches >= 1
