"""BlobService with the memory store, an in-memory source and a small registry on loopback:
which bytes a client gets, from where, and what ends up cached."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import BinaryIO

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from shoal.agent import swarm
from shoal.agent.access import AccessCache
from shoal.agent.blobs import BlobService, BlobSource
from shoal.agent.metrics import AgentMetrics
from shoal.agent.swarm import SwarmConfig, SwarmSource
from shoal.agent.upstreams import Upstreams
from shoal.core.digest import Digest
from shoal.oci.auth import Credentials
from shoal.oci.client import new_session
from shoal.oci.distribution import DistributionPath, PathKind
from shoal.p2p.download_state import DownloadRules
from shoal.p2p.ratelimit import TokenBucket
from shoal.store.blobstore import StoreError
from shoal.store.partial import PartialBlob, PartialState
from shoal.store.testing import MemoryStore, put_blob

from .swarm_fakes import FakePeers, FakeScheduler, MemoryOrigin, piece_hashes_of

MiB = 1 << 20
DATA = os.urandom(2 * MiB + 17)
DIGEST = Digest.of(DATA)


@dataclass
class Registry:
    """A registry holding ``DATA``; every request it saw, as (method, Range header)."""

    seen: list[tuple[str, str | None]] = field(default_factory=list)

    async def blob(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.headers.get("Range")))
        if request.match_info["digest"] != str(DIGEST):
            return web.Response(status=404)
        headers = {"Docker-Content-Digest": str(DIGEST), "Content-Type": "application/octet-stream"}
        rng = request.headers.get("Range")
        if rng is None:
            return web.Response(body=DATA, headers=headers)
        start_text, _, end_text = rng.removeprefix("bytes=").partition("-")
        start = int(start_text)
        end = int(end_text) + 1 if end_text else len(DATA)
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(DATA)}"
        return web.Response(status=206, body=DATA[start:end], headers=headers)


@dataclass
class Rig:
    """An agent's blob service on loopback, and what it talks to."""

    url: str
    registry: Registry
    store: MemoryStore
    origin: MemoryOrigin
    blobs: BlobService
    session: aiohttp.ClientSession

    async def get(self, digest: Digest = DIGEST, rng: str | None = None) -> tuple[int, bytes, dict[str, str]]:
        headers = {"Range": rng} if rng else {}
        async with self.session.get(f"{self.url}/v2/team/app/blobs/{digest}", headers=headers) as resp:
            return resp.status, await resp.read(), dict(resp.headers)

    async def settled(self) -> None:
        """Until every download the service started is over."""
        while self.blobs.partials:
            await asyncio.sleep(0.01)


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(swarm.download, "TICK", 0.05)
    monkeypatch.setattr(swarm.download, "JOIN_PATIENCE", 0.05)
    monkeypatch.setattr(swarm.download, "JOIN_FIRST_PAUSE", 0.01)


MakeSource = Callable[[MemoryStore, Upstreams, MemoryOrigin], BlobSource]


async def rig(store: MemoryStore, make_source: MakeSource | None = None) -> AsyncIterator[Rig]:
    registry = Registry()
    reg_app = web.Application()
    reg_app.router.add_route("*", "/v2/team/app/blobs/{digest}", registry.blob)
    reg_server = TestServer(reg_app, host="127.0.0.1")
    await reg_server.start_server()
    session = new_session()
    metrics = AgentMetrics()
    upstreams = Upstreams({"reg": str(reg_server.make_url("")).rstrip("/")}, session, metrics, AccessCache())
    origin = MemoryOrigin({DIGEST: DATA})
    source = origin if make_source is None else make_source(store, upstreams, origin)
    blobs = BlobService(store, upstreams, source, metrics, origin=origin)

    async def serve(request: web.Request) -> web.StreamResponse:
        digest = Digest.parse(request.match_info["digest"])
        return await blobs.serve(request, DistributionPath(PathKind.BLOB, "reg", "team/app", str(digest), digest), None)

    app = web.Application()
    app.router.add_route("*", "/v2/team/app/blobs/{digest}", serve)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield Rig(str(server.make_url("")).rstrip("/"), registry, store, origin, blobs, session)
    finally:
        await blobs.close()
        await server.close()
        await session.close()
        await reg_server.close()


@pytest.fixture
async def plain(store: MemoryStore) -> AsyncIterator[Rig]:
    async for r in rig(store):
        yield r


class TestCacheHits:
    """A cached blob is served from the store after one access check with the registry."""

    async def test_a_cache_hit_honours_range(self, plain: Rig) -> None:
        await put_blob(plain.store, DATA)
        status, body, headers = await plain.get(rng="bytes=1000-1999")
        assert (status, body) == (206, DATA[1000:2000])
        assert headers["Content-Range"] == f"bytes 1000-1999/{len(DATA)}"
        status, body, _ = await plain.get()
        assert (status, body) == (200, DATA)
        assert plain.registry.seen == [("HEAD", None)]  # the access check, once; no bytes
        assert plain.origin.fills == []


class TestMisses:
    """A miss is filled once into the cache while the client streams it; a Range of a blob
    not cached yet comes from the registry, verified bytes only."""

    async def test_a_miss_is_fetched_once_for_every_client_and_cached(self, plain: Rig) -> None:
        first, second = await asyncio.gather(plain.get(), plain.get())
        assert first[:2] == (200, DATA)
        assert second[:2] == (200, DATA)
        await plain.settled()
        assert plain.origin.fills == [(DIGEST, 0)]  # one download for both clients
        assert plain.store.blob_size(DIGEST) == len(DATA)
        assert (await plain.get())[:2] == (200, DATA)
        assert plain.origin.fills == [(DIGEST, 0)]

    async def test_a_range_of_an_uncached_blob_comes_from_the_registry(self, plain: Rig) -> None:
        status, body, _ = await plain.get(rng="bytes=5-9")
        assert (status, body) == (206, DATA[5:10])
        assert ("GET", "bytes=5-9") in plain.registry.seen
        await plain.settled()
        assert plain.store.blob_size(DIGEST) == len(DATA)  # the whole blob went into the cache meanwhile
        assert plain.origin.fills == [(DIGEST, 0)]


class ClaimsThenFails:
    """The origin fetch's way of writing (claim on file, hash later), failing for the cache's
    sake (a full disk) after the client was sent bytes written but not hashed yet."""

    def __init__(self, metrics: AgentMetrics) -> None:
        self.metrics = metrics

    def streamed(self) -> float:
        value = self.metrics.registry.get_sample_value("shoal_agent_blob_bytes_served_total", {"source": "stream"})
        return value or 0.0

    async def fill(self, partial: PartialBlob, dist: DistributionPath, creds: Credentials | None) -> None:
        partial.set_size(len(DATA))
        hashed, on_file = MiB, MiB + 300_000
        await asyncio.to_thread(partial.claim_in_thread, 0, DATA[:hashed])
        await asyncio.to_thread(partial.advance_in_thread, 0, DATA[:hashed])
        await asyncio.to_thread(partial.claim_in_thread, hashed, DATA[hashed:on_file])
        for _ in range(500):  # until the reader went past the hashed prefix (5 s at most)
            if self.streamed() >= on_file - 1:
                break
            await asyncio.sleep(0.01)
        raise StoreError("disk full")

    async def cached(self, digest: Digest, size: int) -> None:
        pass

    def rejected(self, digest: Digest) -> bool:
        return False


class TestFailureUnderAReader:
    async def test_the_rest_comes_from_the_registry_after_unhashed_bytes(self, store: MemoryStore) -> None:
        """The cache fails while the client has bytes past the hashed prefix (streamed once
        on file): the rest comes from the registry from where the client stands, and the
        digest is still checked over all it was sent."""
        source: list[ClaimsThenFails] = []

        def make(store: MemoryStore, upstreams: Upstreams, origin: MemoryOrigin) -> BlobSource:
            source.append(ClaimsThenFails(upstreams.metrics))
            return source[0]

        async for r in rig(store, make):
            assert (await r.get())[:2] == (200, DATA)
            assert ("GET", f"bytes={MiB + 300_000 - 1}-{len(DATA) - 1}") in r.registry.seen
            await r.settled()
            assert r.store.blob_size(DIGEST) is None


def swarm_source(scheduler: FakeScheduler, peers: FakePeers) -> MakeSource:
    def make(store: MemoryStore, upstreams: Upstreams, origin: MemoryOrigin) -> BlobSource:
        rules = DownloadRules(report_interval=0.05, heartbeat=0.2, stall_timeout=0.6)
        config = SwarmConfig(peer_id="127.0.0.9:65001", address="127.0.0.9:65001", token=None, rules=rules)
        return SwarmSource(config, origin, scheduler, upstreams, store, peers, TokenBucket(0), AgentMetrics())

    return make


class TestThroughTheSwarm:
    """The swarm as the service's source: whatever goes wrong there, the client gets the blob."""

    async def test_a_dead_scheduler_sends_the_blob_to_the_origin(self, store: MemoryStore) -> None:
        scheduler = FakeScheduler(len(DATA), down=True)
        async for r in rig(store, swarm_source(scheduler, FakePeers({}))):
            assert (await r.get())[:2] == (200, DATA)
            await r.settled()
            assert r.origin.fills == [(DIGEST, 0)]
            assert r.store.blob_size(DIGEST) == len(DATA)

    async def test_a_blob_from_lying_hashes_is_refetched_from_the_origin(self, store: MemoryStore) -> None:
        """The lease holder published hashes of other bytes and a parent relayed those bytes:
        every piece matched, the blob failed its digest. The client's stream is cut (never a
        wrong blob), the holder is reported, and the blob comes again from the origin."""
        wrong = bytes(b ^ 0x5A for b in DATA)
        scheduler = FakeScheduler(len(DATA), fetcher="liar", parents=["p1"], hashes=piece_hashes_of(wrong))
        async for r in rig(store, swarm_source(scheduler, FakePeers({"p1": wrong}))):
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.get()
            await r.settled()
            assert r.origin.fills == [(DIGEST, 0)]
            assert (await r.get())[:2] == (200, DATA)
            bad = [rep for rep in scheduler.reports if rep.bad_hashes]
            assert [rep.failed_parents for rep in bad] == [["liar"]]


class HashedThenFails:
    """Hashes the first MiB, then fails for the cache's sake once the reader's copy is under way."""

    def __init__(self) -> None:
        self.copying = asyncio.Event()

    async def fill(self, partial: PartialBlob, dist: DistributionPath, creds: Credentials | None) -> None:
        partial.set_size(len(DATA))
        await asyncio.to_thread(partial.claim_in_thread, 0, DATA[:MiB])
        await asyncio.to_thread(partial.advance_in_thread, 0, DATA[:MiB])
        await asyncio.wait_for(self.copying.wait(), 5)
        raise StoreError("disk full")

    async def cached(self, digest: Digest, size: int) -> None:
        pass

    def rejected(self, digest: Digest) -> bool:
        return False


def cut_copies_short(blobs: BlobService, source: HashedThenFails) -> list[bool]:
    """Make the first long copy to a client stop half-way, once the download has failed."""
    original = blobs._copy_file
    cut: list[bool] = []

    async def copy_cut_short(
        request: web.Request, response: web.StreamResponse, fobj: BinaryIO, start: int, stop: int
    ) -> None:
        if cut or stop - start < 1000:
            return await original(request, response, fobj, start, stop)
        cut.append(True)
        await original(request, response, fobj, start, start + (stop - start) // 2)
        source.copying.set()
        partial = next(iter(blobs.partials.values()), None)
        while partial is not None and partial.state is not PartialState.FAILED:
            await asyncio.sleep(0.01)
        raise ConnectionError("client read nothing for 30s")

    blobs._copy_file = copy_cut_short  # type: ignore[method-assign]
    return cut


class TestACopyCutShortEndsTheResponse:
    async def test_a_copy_cut_short_is_not_sent_again(self, store: MemoryStore) -> None:
        """The client's copy stops part-way (the send timeout of a slow client: ``sendfile``
        is cancelled after sending some of the range) just as the download fails: resuming
        from the upstream at the ``pos`` before that copy would send part of the blob twice,
        a 200 with the wrong bytes. The connection must be cut instead."""
        source = HashedThenFails()
        got: tuple[int, bool] | None = None
        async for r in rig(store, lambda s, u, o: source):
            cut = cut_copies_short(r.blobs, source)
            with contextlib.suppress(aiohttp.ClientError):  # a cut connection: fine
                status, body, _ = await r.get()
                got = (status, body == DATA)
            assert cut
        assert got in (None, (200, True)), "a 200 whose body is not the blob"
