"""The simulator's agent drives the real cores: every report, announcement and fallback comes
from ``DownloadState``'s actions, none from a rule of its own."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pytest
from bench.simulate.fleet import FleetSpec, build_fleet
from bench.simulate.scheduler import Replicas
from bench.simulate.shoal_fleet import ShoalFleet
from bench.simulate.shoal_node import SimDownload
from bench.simulate.world import World

from shoal.p2p import download_state as ds
from shoal.p2p.protocol import HashesView, JoinRequest, Report, TaskView
from shoal.p2p.serving import Haves, ServingBook
from shoal.scheduler.config import SchedulerConfig
from shoal.scheduler.state import SchedulerState

MIB = 1 << 20


@dataclass
class Tally:
    """What the cores asked for, and what the adapter did."""

    asked_reports: int = 0
    asked_final: int = 0
    sent_reports: list[Report] = field(default_factory=list)
    asked_announced: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    announced: Counter[tuple[int, str, int]] = field(default_factory=Counter)
    """(id of the serving book, digest, piece) the adapter announced"""
    gave_up: list[ds.GiveUp] = field(default_factory=list)
    heartbeats: int = 0
    """reports asked for by a state that gave up under a fallback lease (to hold it)"""

    @property
    def download_reports(self) -> list[Report]:
        return [r for r in self.sent_reports if not r.complete]


def watch(monkeypatch: pytest.MonkeyPatch) -> Tally:
    """Count the ``SendReport`` and ``AnnouncePieces`` actions the real state returns, the
    reports that reach a scheduler replica, and the HAVEs the serving side sends."""
    tally = Tally()
    apply = ds.DownloadState.apply

    def counting_apply(self: ds.DownloadState, event: ds.Event) -> list[ds.Action]:
        over = self.finished
        actions = apply(self, event)
        for action in actions:
            if isinstance(action, ds.SendReport):
                tally.asked_reports += 1
                tally.asked_final += action.final
                tally.heartbeats += over
            elif isinstance(action, ds.AnnouncePieces):
                digest = self.salt.split("/", 1)[1]
                tally.asked_announced.update((self.peer_id, digest, i) for i in action.indices)
            elif isinstance(action, ds.GiveUp):
                tally.gave_up.append(action)
        return actions

    report = Replicas.report

    def counting_report(
        self: Replicas, node: int, digest: str, rep: Report, answer: Callable[[TaskView | None], None]
    ) -> None:
        tally.sent_reports.append(rep)
        report(self, node, digest, rep, answer)

    announce = ServingBook.announce

    def counting_announce(self: ServingBook, digest: str, indices: Iterable[int]) -> Haves:
        indices = tuple(indices)
        tally.announced.update((id(self), digest, i) for i in indices)
        return announce(self, digest, indices)

    monkeypatch.setattr(ds.DownloadState, "apply", counting_apply)
    monkeypatch.setattr(Replicas, "report", counting_report)
    monkeypatch.setattr(ServingBook, "announce", counting_announce)
    return tally


def rollout(spec: FleetSpec, *, rules: ds.DownloadRules | None = None) -> ShoalFleet:
    world = World(build_fleet(spec))
    fleet = ShoalFleet(world, seed=spec.seed, rules=rules)
    fleet.start()
    world.run(600.0)
    return fleet


SPEC = FleetSpec(nodes=8, size=24 * MIB, layers=2, bandwidth=12.5e6, origin_bandwidth=12.5e6, seed=2)


class TestOnlyTheCoreSpeaks:
    def test_every_report_is_one_the_core_asked_for(self, monkeypatch: pytest.MonkeyPatch) -> None:
        tally = watch(monkeypatch)
        fleet = rollout(SPEC)
        assert len(fleet.world.done_at) == 8
        assert tally.asked_reports > 8 * 2  # joins answered, shares reported, hashes published
        assert len(tally.download_reports) == tally.asked_reports
        sent = sum(d.reports_sent for a in fleet.services.agents.values() for d in a.downloads.values())
        assert sent == tally.asked_reports
        # the fetchers' last hashes went in a final report: children waited for them
        assert tally.asked_final >= 1

    def test_seeds_announce_through_the_seed_book(self, monkeypatch: pytest.MonkeyPatch) -> None:
        tally = watch(monkeypatch)
        fleet = rollout(SPEC)
        complete = [r for r in tally.sent_reports if r.complete]
        # every node announces each of its 2 blobs once when complete (the rollout is shorter
        # than the 10 s between repeated announcements, and nobody fell back)
        assert len(complete) == 8 * 2
        assert all(not r.hashes for r in complete)
        assert all(len(a.seeds.seeding) == 2 for a in fleet.services.agents.values())

    def test_the_adapter_announces_exactly_what_the_core_asked_for(self, monkeypatch: pytest.MonkeyPatch) -> None:
        tally = watch(monkeypatch)
        fleet = rollout(SPEC)
        books = {id(a.serving): a.peer_id for a in fleet.services.agents.values()}
        announced = Counter({(books[b], d, i): n for (b, d, i), n in tally.announced.items()})
        assert len(tally.asked_announced) > 8 * 2
        assert announced == tally.asked_announced


class TestFallback:
    def test_a_stalled_download_holds_its_fallback_lease_with_the_cores_heartbeats(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # the origin sends a 1 MiB piece in 4 s; children that see nothing for 1 s stall
        spec = FleetSpec(nodes=4, size=4 * MIB, layers=1, bandwidth=12.5e6, origin_bandwidth=0.25e6, seed=1)
        rules = ds.DownloadRules(stall_timeout=1.0, heartbeat=1.0)
        tally = watch(monkeypatch)
        fleet = rollout(spec, rules=rules)
        assert len(fleet.world.done_at) == 4
        leased = [g for g in tally.gave_up if g.fallback_lease]
        assert leased, "no download was granted a fallback lease"
        # after the lease was granted the state kept asking for reports to hold it, and
        # they reached the scheduler as asks for the lease
        assert tally.heartbeats >= len(leased)
        holding = [r for r in tally.download_reports if r.wants_fallback]
        assert len(holding) >= len(leased) + tally.heartbeats
        assert len(tally.download_reports) == tally.asked_reports
        # a blob fetched under a fallback lease publishes its hashes with its announcement
        assert any(r.complete and r.hashes for r in tally.sent_reports)

    def test_no_scheduler_left_ends_in_the_origin_after_the_cores_retries(self) -> None:
        spec = FleetSpec(nodes=4, size=8 * MIB, layers=1, bandwidth=12.5e6, origin_bandwidth=1.25e6, seed=1)
        world = World(build_fleet(spec))
        fleet = ShoalFleet(world, seed=1)
        fleet.start()
        world.timers.at(1.0, lambda: fleet.schedulers.kill(0))
        world.run(600.0)
        assert len(world.done_at) == 4
        states = [d.state for a in fleet.services.agents.values() for d in a.downloads.values()]
        gave_up = [s for s in states if not s.fetching and s.asking is not None]
        assert gave_up, "nobody asked for a fallback"
        assert all(not s.fallback_lease for s in gave_up)


class TestDeath:
    def test_a_dead_node_leaves_every_serving_book(self) -> None:
        """As ``PeerHub`` does when a link closes: a dead child is no longer told of pieces."""
        spec = FleetSpec(nodes=6, size=8 * MIB, layers=1, bandwidth=12.5e6, origin_bandwidth=12.5e6, seed=1)
        world = World(build_fleet(spec))
        fleet = ShoalFleet(world, seed=1)
        fleet.start()
        world.run(0.3)

        def children(node: int) -> set[object]:
            books = [a.serving for a in fleet.services.agents.values() if a.node != node]
            return {child for book in books for blob in book.blobs.values() for child in blob.told}

        victim = next(n for n in world.nodes if n in children(n))
        world.dead.add(victim)
        world.net.kill(victim)
        fleet.kill(victim)
        assert victim not in children(victim)


class TestDroppedParents:
    def test_a_piece_from_a_parent_dropped_meanwhile_is_thrown_away(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """As the agent, which forgets the dropped parent's connection: a piece it still sends
        never reaches the state (the simulator credited it, so moves cost nothing there)."""
        spec = FleetSpec(nodes=6, size=8 * MIB, layers=1, bandwidth=12.5e6, origin_bandwidth=12.5e6, seed=1)
        world = World(build_fleet(spec))
        fleet = ShoalFleet(world, seed=1)
        fleet.start()
        world.run(0.3)
        agents, ids = fleet.services.agents, fleet.services.peer_ids

        def superseeding(peer_id: str, digest: str) -> bool:
            blob = agents[ids[peer_id]].serving.blobs.get(digest)
            return blob is not None and blob.copies is not None

        # not from the superseeding fetcher: its lost copy would hold the piece back (a move
        # never leaves the blob's lease holder)
        def in_flight() -> list[tuple[SimDownload, tuple[str, int]]]:
            return [
                (d, key)
                for a in agents.values()
                for d in a.downloads.values()
                for key, transfer in d.requests.items()
                if transfer is not None and key[0] in d.state.parents and not superseeding(key[0], d.digest)
            ]

        for step in range(1, 100):
            if in_flight() or world.finished():
                break
            world.run(0.3 + 0.02 * step)
        download, (peer_id, index) = in_flight()[0]
        arrived: list[tuple[str, int]] = []
        apply = ds.DownloadState.apply

        def recording(self: ds.DownloadState, event: ds.Event) -> list[ds.Action]:
            if self is download.state and isinstance(event, ds.PieceArrived):
                arrived.append((event.peer_id, event.index))
            return apply(self, event)

        monkeypatch.setattr(ds.DownloadState, "apply", recording)
        download.apply(ds.ParentLost(peer_id, "test: dropped", unreachable=False))
        assert peer_id not in download.state.parents
        world.run(600.0)
        assert len(world.done_at) == 6
        assert (peer_id, index) not in arrived
        assert download.wasted > 0


class TestAskingForHashes:
    def test_hash_asks_pause_as_the_core_says(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The adapter asks the scheduler for hashes as ``SwarmDownload`` does: a long pause
        between asks leaves far fewer of them, and the rollout still completes (a piece
        waiting for its hash ends the pause)."""
        asks = Counter[str]()
        hashes = Replicas.hashes

        def counting_hashes(self: Replicas, node: int, digest: str, start: int, answer: Callable[..., None]) -> None:
            asks[digest] += 1
            hashes(self, node, digest, start, answer)

        monkeypatch.setattr(Replicas, "hashes", counting_hashes)
        monkeypatch.setattr(ds.rules, "HASH_ASK_PAUSE", 0.0)
        fleet = rollout(SPEC)
        assert len(fleet.world.done_at) == 8
        without = sum(asks.values())
        asks.clear()
        monkeypatch.setattr(ds.rules, "HASH_ASK_PAUSE", 30.0)
        fleet = rollout(SPEC)
        assert len(fleet.world.done_at) == 8
        assert sum(asks.values()) < without / 2, (sum(asks.values()), without)


class TestHashWaitersAfterAReset:
    def test_a_waiter_hears_of_hashes_published_again_after_a_reset(self) -> None:
        """A blob that failed its digest drops its hashes; the next holder publishes them
        again from piece 0, and a long-poll waiting meanwhile must hear of them (the replica
        compared the count with the one before the reset and stayed silent)."""
        world = World(
            build_fleet(FleetSpec(nodes=3, size=4 * MIB, layers=1, bandwidth=12.5e6, origin_bandwidth=12.5e6, seed=1))
        )
        reps = Replicas(world, 1, SchedulerConfig(insecure_no_peer_auth=True), seed=1)
        digest, size = "sha256:" + "ab" * 32, 4 * MIB
        hashes = {i: f"{i:064x}" for i in range(4)}

        def call(send: Callable[[], None]) -> None:
            send()
            world.run(world.clock.now + 0.1)

        def report(node: int, **kw: object) -> Report:
            return Report(f"n{node}", f"a{node}", size=size, piece_size=MIB, **kw)  # type: ignore[arg-type]

        def ignore(view: object) -> None:
            pass

        call(lambda: reps.join(1, digest, JoinRequest("n1", "a1", size, MIB), ignore))
        call(lambda: reps.join(2, digest, JoinRequest("n2", "a2", size, MIB), ignore))
        call(
            lambda: reps.report(
                1, digest, report(1, pieces=2, contiguous=2 * MIB, hashes={0: hashes[0], 1: hashes[1]}), ignore
            )
        )
        # n2 built the blob from those pieces and it failed its digest: n1's hashes are dropped
        call(
            lambda: reps.report(
                2, digest, report(2, pieces=0, contiguous=0, failed_parents=["n1"], bad_hashes=True), ignore
            )
        )
        assert reps.states[0].tasks[digest].hashes_known == 0
        heard: list[HashesView | None] = []
        call(lambda: reps.hashes(2, digest, 0, heard.append))
        assert heard == []  # nothing known: the long-poll waits
        call(lambda: reps.join(3, digest, JoinRequest("n3", "a3", size, MIB, pieces=1), ignore))
        assert reps.states[0].tasks[digest].holder == "n3"
        call(lambda: reps.report(3, digest, report(3, pieces=1, contiguous=MIB, hashes={0: hashes[0]}), ignore))
        assert [v.hashes for v in heard if v is not None] == [[hashes[0]]]


class TestWokenWaiters:
    def test_waiters_of_one_start_share_one_call_and_each_hears_its_start(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A new hash wakes every long-poll of the blob: the replica asks the state once per
        start the waiters ask from (the state shares that answer anyway) and hands each
        waiter the answer of its own start; the calls it made are the ones counted."""
        world = World(
            build_fleet(FleetSpec(nodes=5, size=4 * MIB, layers=1, bandwidth=12.5e6, origin_bandwidth=12.5e6, seed=1))
        )
        reps = Replicas(world, 1, SchedulerConfig(insecure_no_peer_auth=True), seed=1)
        digest, size = "sha256:" + "cd" * 32, 4 * MIB
        hashes = {i: f"{i:064x}" for i in range(4)}
        asked: list[int] = []
        state_hashes = SchedulerState.hashes

        def counting_hashes(self: SchedulerState, digest: str, start: int) -> HashesView:
            asked.append(start)
            return state_hashes(self, digest, start)

        monkeypatch.setattr(SchedulerState, "hashes", counting_hashes)

        def call(send: Callable[[], None]) -> None:
            send()
            world.run(world.clock.now + 0.1)

        def ignore(view: object) -> None:
            pass

        call(lambda: reps.join(1, digest, JoinRequest("n1", "a1", size, MIB), ignore))
        call(
            lambda: reps.report(
                1,
                digest,
                Report("n1", "a1", size=size, piece_size=MIB, pieces=1, contiguous=MIB, hashes={0: hashes[0]}),
                ignore,
            )
        )
        heard: dict[int, list[HashesView | None]] = {node: [] for node in (2, 3, 4, 5)}
        starts = {2: 1, 3: 1, 4: 1, 5: 2}
        for node, start in starts.items():
            call(lambda node=node, start=start: reps.hashes(node, digest, start, heard[node].append))  # type: ignore[misc]
        assert all(views == [] for views in heard.values())  # nothing from 1 or 2 known: they wait
        asked.clear()
        calls_before = reps.calls
        published = {1: hashes[1], 2: hashes[2]}
        call(
            lambda: reps.report(
                1,
                digest,
                Report("n1", "a1", size=size, piece_size=MIB, pieces=3, contiguous=3 * MIB, hashes=published),
                ignore,
            )
        )
        assert sorted(asked) == [1, 2]  # one call per start, not one per waiter
        assert reps.calls == calls_before + 1 + 2  # the report and the two calls
        assert reps.by_method["hashes, woken"][0] == 2
        for node, start in starts.items():
            views = heard[node]
            assert len(views) == 1
            assert views[0] is not None
            assert views[0].start == start
            assert views[0].hashes == [hashes[i] for i in range(start, 3)]
