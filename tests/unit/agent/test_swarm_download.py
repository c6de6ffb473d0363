"""The download owner and the swarm source with fakes for every port: a fake scheduler,
fake parents (honest or lying), an in-memory origin and the memory store. The rules are the
pure state's (tests/unit/p2p); these check that the I/O carries them out."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from shoal.agent import swarm
from shoal.agent.metrics import AgentMetrics
from shoal.agent.swarm import AvoidList, SwarmConfig, SwarmDownload, SwarmGaveUpError, SwarmSource
from shoal.core.digest import Digest
from shoal.oci.distribution import DistributionPath, PathKind
from shoal.p2p import download_state as ds
from shoal.p2p.download_state import DownloadRules
from shoal.p2p.download_state import reports as ds_reports
from shoal.p2p.download_state import rules as ds_rules
from shoal.p2p.pieces import PieceGeometry
from shoal.p2p.protocol import PeerInfo
from shoal.p2p.ratelimit import TokenBucket
from shoal.store.partial import PartialBlob
from shoal.store.testing import MemoryStore

from .swarm_fakes import FakePeers, FakeScheduler, MemoryOrigin, piece_hashes_of

MiB = 1 << 20
ME = "127.0.0.9:65001"
DATA = os.urandom(3 * MiB + 5)  # four pieces of 1 MiB, the last one short
DIGEST = Digest.of(DATA)
DIST = DistributionPath(PathKind.BLOB, "reg", "team/app", str(DIGEST), DIGEST)
FAST = DownloadRules(report_interval=0.05, heartbeat=0.2, stall_timeout=0.6, scheduler_lost_grace=0.3)


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tick and retry quickly: the rules' clocks are what is under test, not their seconds."""
    monkeypatch.setattr(swarm.download, "TICK", 0.05)
    monkeypatch.setattr(swarm.download, "JOIN_PATIENCE", 0.05)
    monkeypatch.setattr(swarm.download, "JOIN_FIRST_PAUSE", 0.01)


def config(rules: DownloadRules = FAST) -> SwarmConfig:
    return SwarmConfig(peer_id=ME, address=ME, token=None, rules=rules, status_wait=0.1)


def begin(store: MemoryStore) -> PartialBlob:
    return store.begin(DIGEST, len(DATA))


def download(
    store: MemoryStore, scheduler: FakeScheduler, peers: FakePeers, origin: MemoryOrigin, avoid: AvoidList
) -> tuple[SwarmDownload, PartialBlob]:
    partial = begin(store)
    d = SwarmDownload(
        config=config(),
        partial=partial,
        dist=DIST,
        creds=None,
        geometry=PieceGeometry.of(len(DATA)),
        scheduler=scheduler,
        peers=peers,
        origin=origin,
        bucket=TokenBucket(0),
        avoid=avoid,
        metrics=AgentMetrics(),
    )
    return d, partial


def source(
    store: MemoryStore, scheduler: FakeScheduler, peers: FakePeers, origin: MemoryOrigin
) -> SwarmSource[FakePeers]:
    return SwarmSource(config(), origin, scheduler, FixedSize(), store, peers, TokenBucket(0), AgentMetrics())


class FixedSize:
    async def blob_size(self, creds: object, dist: DistributionPath) -> int | None:
        return len(DATA)


class TestFromParents:
    """Pieces come from parents, are checked against the holder's hashes, written, announced."""

    async def test_a_download_completes_from_a_fake_parent(self, store: MemoryStore) -> None:
        scheduler = FakeScheduler(len(DATA), fetcher="f", parents=["p1"], hashes=piece_hashes_of(DATA))
        peers, origin = FakePeers({"p1": DATA}), MemoryOrigin({DIGEST: DATA})
        d, partial = download(store, scheduler, peers, origin, AvoidList())
        await asyncio.wait_for(d.run(), 10)
        partial.finish()  # every byte matches the digest
        assert origin.fills == []
        assert sorted(peers.announced) == [0, 1, 2, 3]  # each piece told to children once
        assert sorted(i for _, i in peers.requests) == [0, 1, 2, 3]
        assert d.suppliers == {"f"}  # the holder whose hashes we trusted
        assert DIGEST not in peers.sinks  # unregistered at the end

    async def test_a_lying_parent_is_dropped_and_avoided(self, store: MemoryStore) -> None:
        scheduler = FakeScheduler(len(DATA), fetcher="f", parents=["liar", "p2"], hashes=piece_hashes_of(DATA))
        peers = FakePeers({"liar": DATA, "p2": DATA}, liars=["liar"])
        avoid = AvoidList()
        d, partial = download(store, scheduler, peers, MemoryOrigin({DIGEST: DATA}), avoid)
        await asyncio.wait_for(d.run(), 10)
        partial.finish()  # none of the liar's bytes were written
        assert "liar" in peers.forgotten
        assert avoid.until["liar"] > 0
        assert "p2" not in avoid.until
        assert "liar" in d.state.banned

    async def test_a_parent_that_cannot_be_reached_is_not_banned(self, store: MemoryStore) -> None:
        scheduler = FakeScheduler(len(DATA), fetcher="f", parents=["gone", "p2"], hashes=piece_hashes_of(DATA))
        d, partial = download(store, scheduler, FakePeers({"p2": DATA}), MemoryOrigin({DIGEST: DATA}), AvoidList())
        await asyncio.wait_for(d.run(), 10)
        partial.finish()
        assert "gone" not in d.state.banned

    async def test_the_state_hears_of_each_verified_prefix_once(self, store: MemoryStore) -> None:
        """A written piece and the prefix's own wake-up both look at the prefix; each telling
        is a planning pass of the state on the event loop, so a prefix is told once."""
        scheduler = FakeScheduler(len(DATA), fetcher="f", parents=["p1"], hashes=piece_hashes_of(DATA))
        d, partial = download(store, scheduler, FakePeers({"p1": DATA}), MemoryOrigin({DIGEST: DATA}), AvoidList())
        told: list[int] = []
        apply = d.state.apply

        def counting(event: ds.Event) -> list[ds.Action]:
            if isinstance(event, ds.PrefixAdvanced):
                told.append(event.contiguous)
            return apply(event)

        d.state.apply = counting  # type: ignore[method-assign]
        await asyncio.wait_for(d.run(), 10)
        partial.finish()
        assert told, "the prefix was never told"
        assert len(told) == len(set(told)), told


class TestPieceBuffers:
    """A body's buffer goes back to the links' pool once its bytes are on file or dropped."""

    async def test_every_body_is_given_back_written_or_discarded(self, store: MemoryStore) -> None:
        scheduler = FakeScheduler(len(DATA), fetcher="f", parents=["liar", "p2"], hashes=piece_hashes_of(DATA))
        peers = FakePeers({"liar": DATA, "p2": DATA}, liars=["liar"])
        d, partial = download(store, scheduler, peers, MemoryOrigin({DIGEST: DATA}), AvoidList())
        await asyncio.wait_for(d.run(), 10)
        partial.finish()  # every byte written matches the digest
        liars = [b for b in peers.bodies if peers.requests[peers.bodies.index(b)][0] == "liar"]
        assert liars, "the liar's pieces were asked for and discarded"
        assert [b.pool for b in peers.bodies] == [None] * len(peers.bodies)  # each given back
        assert all(len(b.data) == 0 for b in peers.bodies)

    async def test_a_body_is_given_back_only_after_its_write(
        self, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The pool must not hand a buffer to the next piece while a write thread reads it."""
        scheduler = FakeScheduler(len(DATA), fetcher="f", parents=["p1"], hashes=piece_hashes_of(DATA))
        peers = FakePeers({"p1": DATA})
        d, partial = download(store, scheduler, peers, MemoryOrigin({DIGEST: DATA}), AvoidList())
        being_written: set[int] = set()
        given_while_written: list[int] = []
        real_write, real_give = partial._write_sync, peers.buffers.give

        def write_sync(offset: int, data: bytes | bytearray | memoryview) -> bool:
            being_written.add(id(data))
            time.sleep(0.02)  # the loop runs on meanwhile
            try:
                return real_write(offset, data)
            finally:
                being_written.discard(id(data))

        def give(buffer: bytearray) -> None:
            if id(buffer) in being_written:
                given_while_written.append(id(buffer))
            real_give(buffer)

        monkeypatch.setattr(partial, "_write_sync", write_sync)
        monkeypatch.setattr(peers.buffers, "give", give)
        await asyncio.wait_for(d.run(), 10)
        partial.finish()
        assert len(peers.bodies) == 4
        assert all(b.pool is None for b in peers.bodies)
        assert given_while_written == []


class TestOriginFetcher:
    """Named the lease holder, the download fetches from the origin and publishes every
    piece hash (the last ones in the final report)."""

    async def test_the_fetcher_publishes_all_hashes(self, store: MemoryStore) -> None:
        scheduler = FakeScheduler(len(DATA), fetcher=ME)
        peers, origin = FakePeers({}), MemoryOrigin({DIGEST: DATA})
        d, partial = download(store, scheduler, peers, origin, AvoidList())
        await asyncio.wait_for(d.run(), 10)
        partial.finish()
        assert origin.fills == [(DIGEST, 0)]
        assert [scheduler.published[i] for i in range(4)] == piece_hashes_of(DATA)
        sent = [i for r in scheduler.reports for i in r.hashes]
        assert sorted(sent) == [0, 1, 2, 3]  # each hash published once
        assert sorted(peers.announced) == [0, 1, 2, 3]

    async def test_the_node_s_other_downloads_hear_of_the_fetch_and_its_end(self, store: MemoryStore) -> None:
        scheduler = FakeScheduler(len(DATA), fetcher=ME)
        peers, origin = FakePeers({}), MemoryOrigin({DIGEST: DATA})
        d, partial = download(store, scheduler, peers, origin, AvoidList())
        heard: list[bool] = []
        d.fetches.join("another blob", lambda event: heard.append(event.active))
        await asyncio.wait_for(d.run(), 10)
        partial.finish()
        assert heard == [True, False]

    async def test_a_report_that_crashes_is_sent_again(self, store: MemoryStore) -> None:
        """The state waits for a report's answer: a bug in sending it must not stop every
        later report (the fetcher's hashes, which its children wait for)."""
        scheduler = FakeScheduler(len(DATA), fetcher=ME)
        scheduler.crashes = 1
        origin = MemoryOrigin({DIGEST: DATA}, delay=0.05)  # about 0.7 s: time for reports
        d, _ = download(store, scheduler, FakePeers({}), origin, AvoidList())
        await asyncio.wait_for(d.run(), 10)
        assert [scheduler.published[i] for i in range(4)] == piece_hashes_of(DATA)
        assert len(scheduler.reports) >= 2  # not only the final one

    async def test_a_fetcher_whose_origin_is_slow_reports_at_its_fetching_heartbeat(
        self, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The scheduler moves a named fetcher's lease after a short silence: between two
        slow pieces the owner's timer sends reports with nothing new, well before the
        download's own (long) heartbeat."""
        monkeypatch.setattr(ds_reports, "FETCHER_HEARTBEAT", 0.05)
        scheduler = FakeScheduler(len(DATA), fetcher=ME)
        origin = MemoryOrigin({DIGEST: DATA}, delay=0.4, chunk=MiB)  # a piece every 0.4 s
        partial = begin(store)
        d = SwarmDownload(
            config=config(DownloadRules(report_interval=0.01, heartbeat=5.0)),
            partial=partial,
            dist=DIST,
            creds=None,
            geometry=PieceGeometry.of(len(DATA)),
            scheduler=scheduler,
            peers=FakePeers({}),
            origin=origin,
            bucket=TokenBucket(0),
            avoid=AvoidList(),
            metrics=AgentMetrics(),
        )
        await asyncio.wait_for(d.run(), 10)
        assert [scheduler.published[i] for i in range(4)] == piece_hashes_of(DATA)
        # 1.6 s of fetching: about 30 reports with nothing new (none at the 5 s heartbeat)
        assert sum(not r.hashes for r in scheduler.reports) >= 10


class TestAskingForHashes:
    """A child lets the holder's piece hashes gather at the scheduler instead of asking after
    each new one, unless a piece it received waits for its hash."""

    async def test_hashes_published_one_by_one_are_asked_for_in_a_few_calls(
        self, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(ds_rules, "HASH_ASK_PAUSE", 0.25)
        data = os.urandom(16 * MiB)
        digest = Digest.of(data)
        hashes = piece_hashes_of(data)
        scheduler = FakeScheduler(len(data), fetcher="f")
        partial = store.begin(digest, len(data))
        d = SwarmDownload(
            config=config(),
            partial=partial,
            dist=DistributionPath(PathKind.BLOB, "reg", "team/app", str(digest), digest),
            creds=None,
            geometry=PieceGeometry.of(len(data)),
            scheduler=scheduler,
            peers=FakePeers({"p1": data}),
            origin=MemoryOrigin({digest: data}),
            bucket=TokenBucket(0),
            avoid=AvoidList(),
            metrics=AgentMetrics(),
        )
        run = asyncio.create_task(d.run())
        for index, sha in enumerate(hashes):  # the holder's fetch: a piece every 40 ms
            await asyncio.sleep(0.04)
            scheduler.publish(index, sha)
        asks = scheduler.hash_asks
        scheduler.parents = [PeerInfo("p1", "p1:65001", complete=True)]
        await asyncio.wait_for(run, 10)
        partial.finish()
        # one ask per new hash would be 16; a pause of 0.25 s over 0.64 s leaves a few
        assert asks <= 5, asks

    async def test_a_piece_that_waits_for_its_hash_asks_at_once(
        self, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(ds_rules, "HASH_ASK_PAUSE", 60.0)
        hashes = piece_hashes_of(DATA)
        # piece 0's hash is known at once: the first ask answers, and the child pauses
        scheduler = FakeScheduler(len(DATA), fetcher="f", parents=["p1"], hashes=hashes[:1])
        d, partial = download(store, scheduler, FakePeers({"p1": DATA}), MemoryOrigin({DIGEST: DATA}), AvoidList())
        run = asyncio.create_task(d.run())
        await asyncio.sleep(0.3)  # pieces 1-3 came in and wait for their hashes
        assert not run.done()
        for index in (1, 2, 3):
            scheduler.publish(index, hashes[index])
        await asyncio.wait_for(run, 5)  # not after the 60 s pause
        partial.finish()

    async def test_the_fetcher_does_not_ask_for_its_own_hashes(
        self, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Its origin fetch makes the hashes the scheduler would answer with: each ask was an
        HTTPS call to the scheduler for nothing (about two a second per fetch)."""
        monkeypatch.setattr(ds_rules, "HASH_ASK_PAUSE", 0.05)
        scheduler = FakeScheduler(len(DATA), fetcher=ME)
        origin = MemoryOrigin({DIGEST: DATA}, delay=0.05)  # about 0.7 s of fetching
        d, partial = download(store, scheduler, FakePeers({}), origin, AvoidList())
        await asyncio.wait_for(d.run(), 10)
        partial.finish()
        assert [scheduler.published[i] for i in range(4)] == piece_hashes_of(DATA)
        assert scheduler.hash_asks == 0

    async def test_a_fetcher_whose_lease_moved_asks_for_the_new_holder_s_hashes(
        self, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(ds_rules, "HASH_ASK_PAUSE", 0.05)
        hashes = piece_hashes_of(DATA)
        scheduler = FakeScheduler(len(DATA), fetcher=ME)
        origin = MemoryOrigin({DIGEST: DATA}, delay=10.0)  # never gets far
        d, partial = download(store, scheduler, FakePeers({"p1": DATA}), origin, AvoidList())
        run = asyncio.create_task(d.run())
        await asyncio.sleep(0.2)
        assert scheduler.hash_asks == 0
        scheduler.fetcher = "p1"  # the next report's answer moves the lease
        scheduler.parents = [PeerInfo("p1", "p1:65001", complete=True)]
        for index, sha in enumerate(hashes):
            scheduler.publish(index, sha)
        await asyncio.wait_for(run, 5)
        partial.finish()
        assert scheduler.hash_asks >= 1

    async def test_a_fetcher_whose_lease_moved_asks_at_once_though_no_piece_waits(
        self, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The lease moving wakes the hash loop itself: the new holder's hashes are fetched
        before its pieces come, not a HASH_ASK_PAUSE later (nor, were the pause's check of
        the lease lost, only once a piece waits for its hash)."""
        monkeypatch.setattr(ds_rules, "HASH_ASK_PAUSE", 30.0)
        scheduler = FakeScheduler(len(DATA), fetcher=ME)
        origin = MemoryOrigin({DIGEST: DATA}, delay=10.0)  # never gets far
        d, _ = download(store, scheduler, SomePieces({"p1": DATA}, []), origin, AvoidList())
        run = asyncio.create_task(d.run())
        try:
            await asyncio.sleep(0.2)
            assert d.state.fetching
            assert scheduler.hash_asks == 0
            scheduler.fetcher = "p1"  # the next report's answer moves the lease
            scheduler.parents = [PeerInfo("p1", "p1:65001", complete=True)]
            async with asyncio.timeout(5):
                while d.state.fetching:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)
            assert not d.state.awaiting_hash  # p1 tells of no piece: none waits
            assert scheduler.hash_asks >= 1
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)


class SomePieces(FakePeers):
    """Parents that hold only ``holds`` (they announce nothing else)."""

    def __init__(self, blobs: dict[str, bytes], holds: list[int]) -> None:
        super().__init__(blobs)
        self.holds = holds

    async def add_parent(self, digest: Digest, pieces: int, peer_id: str, address: str) -> None:
        sink = self.sinks[digest]
        asyncio.get_running_loop().call_soon(sink.parent_has, peer_id, self.holds)


class TestPauseAfterAnAnswer:
    async def test_an_answer_that_checks_every_waiting_piece_is_followed_by_the_pause(
        self, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Pieces 0 and 1 wait for their hashes; the answer brings both. No piece waits any
        more, though the answer's hashes are not applied yet when the pause is reckoned."""
        monkeypatch.setattr(ds_rules, "HASH_ASK_PAUSE", 60.0)
        hashes = piece_hashes_of(DATA)
        scheduler = FakeScheduler(len(DATA), fetcher="f", parents=["p1"])
        peers = SomePieces({"p1": DATA}, [0, 1])
        d, _ = download(store, scheduler, peers, MemoryOrigin({DIGEST: DATA}), AvoidList())
        run = asyncio.create_task(d.run())
        try:
            await asyncio.sleep(0.25)
            assert set(d.state.awaiting_hash) == {0, 1}
            asks = scheduler.hash_asks  # the long-poll in flight is counted
            scheduler.publish(0, hashes[0])
            scheduler.publish(1, hashes[1])
            await asyncio.sleep(0.05)
            assert not d.state.awaiting_hash  # both checked
            assert scheduler.hash_asks == asks, "asked again at once though no piece waits"
        finally:
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run


class TestFallback:
    """Whatever goes wrong in the swarm ends with the rest of the blob from the origin."""

    async def test_a_dead_scheduler_sends_the_blob_to_the_origin(self, store: MemoryStore) -> None:
        scheduler = FakeScheduler(len(DATA), down=True)
        origin = MemoryOrigin({DIGEST: DATA})
        src = source(store, scheduler, FakePeers({}), origin)
        partial = begin(store)
        await asyncio.wait_for(src.fill(partial, DIST, None), 10)
        partial.finish()
        assert origin.fills == [(DIGEST, 0)]
        assert src.metrics.swarm_fallbacks.labels("scheduler")._value.get() == 1

    async def test_a_scheduler_back_within_the_patience_is_joined(
        self, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Six failed joins (a scheduler restarting, or swamped by a rollout's first second)
        still end in the swarm: the blob comes from a parent, not from the origin."""
        monkeypatch.setattr(swarm.download, "JOIN_PATIENCE", 5.0)
        monkeypatch.setattr(swarm.download, "JOIN_LONGEST_PAUSE", 0.02)
        scheduler = FakeScheduler(len(DATA), fail_joins=6, parents=["p1"], hashes=piece_hashes_of(DATA))
        origin = MemoryOrigin({DIGEST: DATA})
        src = source(store, scheduler, FakePeers({"p1": DATA}), origin)
        partial = begin(store)
        await asyncio.wait_for(src.fill(partial, DIST, None), 10)
        partial.finish()
        assert scheduler.join_attempts == 7
        assert origin.fills == []
        assert partial.contiguous == len(DATA)

    async def test_a_scheduler_that_says_no_is_not_asked_again(
        self, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A 4xx is the scheduler's answer, not its absence: the origin at once, no waiting."""
        monkeypatch.setattr(swarm.download, "JOIN_PATIENCE", 5.0)
        scheduler = FakeScheduler(len(DATA), reject_joins=True)
        d, _ = download(store, scheduler, FakePeers({}), MemoryOrigin({}), AvoidList())
        with pytest.raises(SwarmGaveUpError, match="403"):
            await asyncio.wait_for(d.run(), 1)
        assert scheduler.join_attempts == 1

    async def test_the_join_error_is_the_swarms_to_handle(self, store: MemoryStore) -> None:
        d, _ = download(store, FakeScheduler(len(DATA), down=True), FakePeers({}), MemoryOrigin({}), AvoidList())
        with pytest.raises(SwarmGaveUpError, match="scheduler"):
            await asyncio.wait_for(d.run(), 10)

    async def test_a_node_that_cannot_reach_a_complete_copy_reads_the_registry(self, store: MemoryStore) -> None:
        """Issue 16, F6: every peer refuses this node's certificate, and a complete copy is in
        the swarm, so the scheduler refuses every fallback ask: the pull waited for ever."""
        scheduler = FakeScheduler(len(DATA), parents=["seed"], hashes=piece_hashes_of(DATA))
        origin = MemoryOrigin({DIGEST: DATA})
        src = source(store, scheduler, FakePeers({}), origin)  # "seed" cannot be reached
        partial = begin(store)
        await asyncio.wait_for(src.fill(partial, DIST, None), 10)
        partial.finish()
        assert origin.fills == [(DIGEST, 0)]
        assert [r.wants_fallback for r in scheduler.reports].count(True) == 3

    async def test_a_stalled_swarm_holds_its_fallback_lease_while_it_fetches(self, store: MemoryStore) -> None:
        """The holder never publishes hashes: the download stalls, asks, is granted a lease,
        and reports with wants_fallback every heartbeat while the origin fetch runs."""
        scheduler = FakeScheduler(len(DATA), fetcher="f", parents=["p1"], grant_fallback=True)
        origin = MemoryOrigin({DIGEST: DATA}, delay=0.1, chunk=MiB // 2)  # about 0.7 s
        src = source(store, scheduler, FakePeers({"p1": DATA}), origin)
        partial = begin(store)
        await asyncio.wait_for(src.fill(partial, DIST, None), 10)
        partial.finish()
        asks = [r for r in scheduler.reports if r.wants_fallback]
        assert len(asks) >= 3  # the ask, then heartbeats while the origin fetch ran
        assert asks[-1].contiguous > asks[0].contiguous  # they carry the fetch's progress
        assert origin.fills == [(DIGEST, 0)]
        await store.commit(partial)
        # the blob complete: announced with its piece hashes (a fallback holder publishes them)
        await src.cached(DIGEST, len(DATA))
        assert scheduler.reports[-1].complete
        assert scheduler.reports[-1].hashes == dict(enumerate(piece_hashes_of(DATA)))
