"""The scheduler's state machine, driven with an explicit clock."""

from __future__ import annotations

import random
import tracemalloc

import pytest

from shoal.p2p.download_state.rules import FETCHER_HEARTBEAT, DownloadRules
from shoal.p2p.pieces import choose_piece_size, piece_count
from shoal.p2p.protocol import JoinRequest, Report, TaskView
from shoal.scheduler.config import SchedulerConfig
from shoal.scheduler.state import ConflictError, FullError, SchedulerState, StateError, UnknownTaskError

D = "sha256:" + "a" * 64
E = "sha256:" + "b" * 64
MiB = 1 << 20
SIZE = 10 * MiB  # 10 pieces of 1 MiB


def h(i: int) -> str:
    return f"{i:064x}"


def state(**kw: object) -> SchedulerState:
    return SchedulerState(SchedulerConfig(**kw), rng=random.Random(7))  # type: ignore[arg-type]


def join(
    s: SchedulerState, peer: str, now: float, *, digest: str = D, pieces: int = 0, complete: bool = False
) -> TaskView:
    return s.join(digest, JoinRequest(peer, f"{peer}:1", SIZE, MiB, pieces=pieces, complete=complete), now)


def report(
    s: SchedulerState,
    peer: str,
    now: float,
    *,
    pieces: int = 0,
    contiguous: int | None = None,
    complete: bool = False,
    hashes: dict[int, str] | None = None,
    failed: list[str] | None = None,
    digest: str = D,
) -> TaskView:
    rep = Report(
        peer,
        f"{peer}:1",
        pieces=pieces,
        contiguous=pieces * MiB if contiguous is None else contiguous,
        complete=complete,
        hashes=hashes or {},
        failed_parents=failed or [],
        size=SIZE,
        piece_size=MiB,
    )
    return s.report(digest, rep, now)


class Busy(SchedulerState):
    """A scheduler in a rollout: another task's member calls every 0.5 s between the test's
    calls (a scheduler that hears nobody for ``SCHEDULER_PAUSE`` takes itself as paused)."""

    def __init__(self, config: SchedulerConfig, rng: random.Random) -> None:
        super().__init__(config, rng)
        self.bystander_at = 0.0

    def _bystand(self, now: float) -> None:
        while self.bystander_at < now:
            super().join(E, JoinRequest("z", "z:1", SIZE, MiB), self.bystander_at)
            self.bystander_at += 0.5

    def pause(self, until: float) -> None:
        """Nobody's call is read until ``until`` (the scheduler could not run)."""
        self.bystander_at = max(self.bystander_at, until)

    def join(self, digest: str, req: JoinRequest, now: float) -> TaskView:
        self._bystand(now)
        return super().join(digest, req, now)

    def report(self, digest: str, rep: Report, now: float) -> TaskView:
        self._bystand(now)
        return super().report(digest, rep, now)


def busy(**kw: object) -> Busy:
    return Busy(SchedulerConfig(**kw), rng=random.Random(7))  # type: ignore[arg-type]


def all_hashes() -> dict[int, str]:
    return {i: h(i) for i in range(10)}


def bad_hashes(s: SchedulerState, peer: str, now: float, blamed: list[str]) -> TaskView:
    """What an agent sends when verified pieces made a blob that fails its digest."""
    rep = Report(peer, f"{peer}:1", 0, 0, failed_parents=blamed, size=SIZE, piece_size=MiB, bad_hashes=True)
    return s.report(D, rep, now)


class TestLease:
    """Exactly one origin fetcher per task, moved when it dies or stalls."""

    def test_first_joiner_gets_it_and_only_it(self) -> None:
        s = state()
        assert join(s, "a", 0).role == "fetcher"
        for i, peer in enumerate("bcdef"):
            view = join(s, peer, 0.1 * i)
            assert view.role == "peer"
            assert view.fetcher == "a"
        assert s.lease_changes == 1

    def test_holder_keeps_it_while_reporting_progress(self) -> None:
        s = state()
        join(s, "a", 0)
        join(s, "b", 0)
        for t in range(1, 30):
            assert report(s, "a", t, pieces=t // 3).role == "fetcher"
            assert report(s, "b", t).role == "peer"
        assert s.lease_changes == 1

    def test_moves_when_holder_stops_reporting(self) -> None:
        s = state(lease_ttl=5.0)
        join(s, "a", 0)
        join(s, "b", 0)
        assert report(s, "b", 4.9).role == "peer"
        view = report(s, "b", 5.2)
        assert view.role == "fetcher"
        assert view.fetcher == "b"
        assert s.lease_changes == 2
        assert [(m.old_holder, m.new_holder, m.reason) for m in s.lease_moves] == [("a", "b", "no report for 5.2s")]
        # the old holder coming back does not take it back
        assert report(s, "a", 5.3, pieces=3).role == "peer"

    def test_holder_reporting_late_keeps_it_if_nobody_took_it(self) -> None:
        s = state(lease_ttl=5.0)
        join(s, "a", 0)
        assert report(s, "a", 7.0, pieces=1).role == "fetcher"
        assert s.lease_changes == 1

    def test_leases_spread_over_peers(self) -> None:
        """The first node joins every layer first; the second layer's lease waits for another."""
        s = state()
        assert join(s, "a", 0).role == "fetcher"
        assert join(s, "a", 0.01, digest=E).role == "peer"
        assert join(s, "b", 0.2, digest=E).role == "fetcher"
        assert report(s, "a", 0.5, digest=E).fetcher == "b"

    def test_a_lone_peer_still_gets_every_lease(self) -> None:
        s = state()
        join(s, "a", 0)
        assert join(s, "a", 0.01, digest=E).role == "peer"
        assert report(s, "a", 0.5, digest=E).role == "peer"
        assert report(s, "a", 1.1, digest=E).role == "fetcher"

    def test_a_finished_fetch_frees_the_peer_for_the_next_lease(self) -> None:
        s = state()
        assert join(s, "a", 0).role == "fetcher"
        report(s, "a", 0.5, pieces=10, complete=True, hashes=all_hashes())
        assert join(s, "a", 0.6, digest=E).role == "fetcher"

    def test_open_lease_prefers_a_peer_without_one(self) -> None:
        s = state(lease_ttl=5.0)
        join(s, "a", 0)  # a holds D's lease
        join(s, "a", 0, digest=E)
        assert join(s, "c", 0.05, digest=E).role == "fetcher"
        join(s, "b", 0.1, digest=E)
        for t in (2.0, 4.0):
            report(s, "a", t)
            report(s, "a", t, pieces=5, digest=E)
            report(s, "b", t, pieces=1, digest=E)
        # c went silent: a holds the most of E, but b holds no other lease
        assert report(s, "a", 5.5, pieces=5, digest=E).role == "peer"
        assert report(s, "b", 5.6, pieces=1, digest=E).role == "fetcher"
        assert [(m.old_holder, m.new_holder) for m in s.lease_moves] == [("c", "b")]

    def test_moves_when_holder_stalls(self) -> None:
        s = state(lease_ttl=5.0, stall_timeout=10.0)
        join(s, "a", 0)
        join(s, "b", 0)
        for t in range(1, 10):
            report(s, "a", t, pieces=2)  # no progress after the first report
            assert report(s, "b", t + 0.5, pieces=1).role == "peer"
        for t in range(10, 12):
            report(s, "a", t, pieces=2)
        view = report(s, "b", 12.5, pieces=1)
        assert view.role == "fetcher"
        assert [(m.old_holder, m.new_holder, m.reason) for m in s.lease_moves] == [("a", "b", "no progress for 11.5s")]
        assert report(s, "a", 13, pieces=2).role == "peer"

    def test_stalled_holder_keeps_it_when_nobody_else_can_fetch(self) -> None:
        s = state(stall_timeout=10.0)
        join(s, "a", 0)
        for t in range(1, 30):
            assert report(s, "a", t, pieces=2).role == "fetcher"
        assert s.lease_changes == 1

    def test_goes_to_the_peer_with_the_most_contiguous_bytes(self) -> None:
        s = state(lease_ttl=5.0)
        join(s, "a", 0)
        for peer in "bcd":
            join(s, peer, 0)
        report(s, "b", 4, contiguous=1 * MiB, pieces=1)
        report(s, "c", 4, contiguous=3 * MiB, pieces=3)
        report(s, "d", 4, contiguous=2 * MiB, pieces=2)
        # the holder "a" is silent; b and d ask first but c holds the most
        assert report(s, "b", 6, contiguous=1 * MiB, pieces=1).role == "peer"
        assert report(s, "d", 6.1, contiguous=2 * MiB, pieces=2).role == "peer"
        assert report(s, "c", 6.2, contiguous=3 * MiB, pieces=3).role == "fetcher"
        assert report(s, "b", 6.3, contiguous=1 * MiB, pieces=1).fetcher == "c"

    def test_a_silent_best_candidate_does_not_block_the_lease(self) -> None:
        s = state(lease_ttl=5.0)
        join(s, "a", 0)
        join(s, "c", 0)
        join(s, "b", 0)
        report(s, "c", 1, pieces=5)  # c has most but then goes quiet
        for t in (3, 5, 7):
            report(s, "b", t, pieces=1)
        assert report(s, "b", 7.5, pieces=1).role == "fetcher"

    def test_a_holder_named_by_a_child_and_silent_loses_it_before_lease_ttl(self) -> None:
        s = busy(lease_ttl=15.0)
        assert join(s, "a", 0).role == "fetcher"
        join(s, "b", 0)
        report(s, "a", 5, pieces=1)  # a's last word, at its heartbeat's pace: it died here
        report(s, "b", 10, failed=["a"])  # its child lost the link
        assert report(s, "b", 14.5).fetcher == "a"  # named, but silent for 9.5 s only
        assert report(s, "b", 15.5).role == "fetcher"  # 10.5 s: not 15 s (the fleet waits on it)

    def test_a_fetcher_named_and_silent_at_its_pieces_pace_loses_it_sooner(self) -> None:
        """A fetcher reports each new piece hash at once: five silent seconds are many
        missed reports, and the whole fleet waits on its blob meanwhile."""
        s = busy(lease_ttl=15.0)
        assert join(s, "a", 0).role == "fetcher"
        join(s, "b", 0)
        for i, t in enumerate((0.5, 1.0, 1.5), start=1):
            report(s, "a", t, pieces=i, hashes={i - 1: h(i - 1)})  # then it died
        report(s, "b", 6.4, failed=["a"])  # its child noticed the dead link
        assert report(s, "b", 6.45).fetcher == "a"  # silent 4.95 s
        assert report(s, "b", 6.6).role == "fetcher"  # 5.1 s, not 10

    def test_a_fetcher_that_slowed_to_its_heartbeat_keeps_the_longer_silence(self) -> None:
        s = busy(lease_ttl=15.0)
        join(s, "a", 0)
        join(s, "b", 0)
        report(s, "a", 0.5, pieces=1, hashes={0: h(0)})
        report(s, "a", 5.5, pieces=2, hashes={1: h(1)})  # a slow origin: one piece per 5 s
        report(s, "b", 6, failed=["a"])
        assert report(s, "b", 12.5).fetcher == "a"  # silent 7 s at a 5 s pace: not dead yet
        assert report(s, "b", 15.6).role == "fetcher"

    @pytest.mark.parametrize("first", ["join", "report"])
    def test_a_live_fetcher_whose_next_piece_is_slow_keeps_it_at_its_heartbeat(self, first: str) -> None:
        """Two calls close together (a join and its first report, a retry) say nothing of the
        next piece's pace: a fetcher whose origin slows reports at its fetching heartbeat,
        late by the timer, the network and the scheduler's queue; its children, waiting on
        that piece, name it meanwhile (the review's case)."""
        heartbeat = min(DownloadRules().heartbeat, FETCHER_HEARTBEAT)
        late = 0.4
        s = busy(lease_ttl=15.0)
        assert join(s, "a", 0).role == "fetcher"
        join(s, "b", 0)
        if first == "report":
            report(s, "a", 0.5, pieces=1, hashes={0: h(0)})
        t = 1.0
        report(s, "a", t, pieces=2 if first == "report" else 1, hashes={1: h(1)})
        report(s, "b", 3.0, failed=["a"])  # a child waiting on a's next piece gave up on it
        for _ in range(5):
            assert report(s, "b", t + heartbeat + late - 0.01).fetcher == "a"
            t += heartbeat + late
            report(s, "a", t, pieces=2)  # nothing new: its heartbeat
        assert report(s, "b", t + 5.1).role == "fetcher"  # then it died

    def test_a_live_fetcher_keeps_it_through_a_pause_of_the_scheduler(self) -> None:
        """Calls queued while the scheduler could not run arrive together, in the order they
        were sent: a child's call sent just before the fetcher's heartbeat is answered first,
        when the fetcher has not been heard from for as long as the scheduler was stalled."""
        heartbeat = min(DownloadRules().heartbeat, FETCHER_HEARTBEAT)
        s = busy(lease_ttl=15.0)
        assert join(s, "a", 0).role == "fetcher"
        join(s, "b", 0)
        for t in (heartbeat, 2 * heartbeat):
            report(s, "a", t, pieces=1)  # at its fetching heartbeat's pace, alive
        report(s, "b", 2 * heartbeat + 0.1, failed=["a"])  # one child lost its link to a
        # the scheduler answers nobody from 4.1 s to 9.05 s: b's call (sent at 5.5) and a's
        # heartbeat (sent at 6, so 3 s late) are then read one after the other
        resumed = 2 * heartbeat + 5.05
        s.pause(resumed)
        assert report(s, "b", resumed).fetcher == "a"
        assert report(s, "a", resumed + 0.001, pieces=1).role == "fetcher"
        report(s, "b", resumed + 1, failed=["a"])
        # then a died: the pause made its pace look slow, so it gets the longer silence
        assert report(s, "b", resumed + 9.9).fetcher == "a"
        assert report(s, "b", resumed + 10.05).role == "fetcher"

    def test_a_fetcher_of_an_older_agent_keeps_the_longer_silence(self) -> None:
        """An agent before the fetching heartbeat reports every 5 s with nothing new: once
        seen that slow, its holder gets the 10 s."""
        s = busy(lease_ttl=15.0)
        join(s, "a", 0)
        join(s, "b", 0)
        report(s, "a", 0.2, pieces=1, hashes={0: h(0)})
        report(s, "a", 5.3, pieces=1)  # its 5 s heartbeat, a little late
        report(s, "b", 6, failed=["a"])
        assert report(s, "b", 13).fetcher == "a"  # silent 7.7 s
        assert report(s, "b", 15.4).role == "fetcher"  # 10.1 s

    def test_a_named_holder_that_reports_keeps_it(self) -> None:
        s = busy(lease_ttl=15.0)
        join(s, "a", 0)
        join(s, "b", 0)
        report(s, "b", 1, failed=["a"])  # a merely timed out for b: busy, not dead
        for t in (2, 4, 6, 8, 10):
            report(s, "a", t, pieces=t)
        assert report(s, "b", 10.5).fetcher == "a"
        assert report(s, "b", 20.5).role == "fetcher"  # a silent 10.5 s since its last report

    def test_one_late_heartbeat_of_a_named_holder_keeps_it(self) -> None:
        """A child may name the holder falsely: a heartbeat that arrives a second late (every
        5 s, on a loaded scheduler) must not hand that child the lease."""
        s = busy(lease_ttl=15.0)
        join(s, "a", 0)
        join(s, "b", 0)
        report(s, "a", 0.5, pieces=1)
        report(s, "b", 0.6, failed=["a"])
        report(s, "a", 5.5, pieces=2)
        assert report(s, "b", 11.6, failed=["a"]).fetcher == "a"  # a's next report is 1.1 s late
        assert report(s, "a", 11.7, pieces=3).role == "fetcher"

    def test_an_older_agent_alone_on_a_quiet_scheduler_keeps_the_longer_silence(self) -> None:
        """Its 5 s heartbeats were the scheduler's only calls until a child came: that pace
        is the holder's own, not a pause of the scheduler."""
        s = state(lease_ttl=15.0)
        join(s, "a", 0)
        report(s, "a", 0.2, pieces=1, hashes={0: h(0)})
        report(s, "a", 5.3, pieces=1)  # its 5 s heartbeat, nobody else calling
        join(s, "b", 6)  # a child, short of parents: it reports every second
        report(s, "b", 7, failed=["a"])  # a timed out for it once
        for t in (8, 9, 10):
            report(s, "b", t)
        assert report(s, "b", 10.4).fetcher == "a"  # silent 5.1 s at its 5 s pace: alive
        assert report(s, "a", 10.5, pieces=1).role == "fetcher"

    def test_a_dead_fetcher_on_a_quiet_scheduler_still_loses_it_at_lease_ttl(self) -> None:
        """Calls too sparse for the suspect rule (each ends 2 s without a call): the lease
        still moves by ``lease_ttl``, counted on the scheduler's own clock."""
        s = state(lease_ttl=15.0)
        assert join(s, "a", 0).role == "fetcher"
        join(s, "b", 0)
        report(s, "a", 1, pieces=1, hashes={0: h(0)})  # then it died
        for t in (4, 7, 10, 13, 15.9):
            assert report(s, "b", t, failed=["a"]).fetcher == "a"
        assert report(s, "b", 16.1, failed=["a"]).role == "fetcher"  # 15.1 s

    def test_leave_frees_it_for_the_next_peer(self) -> None:
        s = state()
        join(s, "a", 0)
        join(s, "b", 0)
        s.leave(D, "a")
        assert report(s, "b", 1).role == "fetcher"

    def test_not_needed_once_a_peer_is_complete_with_all_hashes(self) -> None:
        s = state()
        join(s, "a", 0)
        report(s, "a", 1, pieces=10, complete=True, hashes=all_hashes())
        view = join(s, "b", 2)
        assert view.role == "peer"
        assert view.fetcher is None
        assert [p.peer_id for p in view.parents] == ["a"]

    def test_needed_again_when_complete_peers_vanish(self) -> None:
        s = state(peer_ttl=30.0)
        join(s, "a", 0)
        report(s, "a", 1, pieces=10, complete=True, hashes=all_hashes())
        assert join(s, "b", 2).role == "peer"
        s.leave(D, "a")
        assert report(s, "b", 3).role == "fetcher"

    def test_not_needed_again_when_the_complete_peer_is_only_suspect(self) -> None:
        # a seed that timed out for a child (busy serving the swarm) still holds pieces every
        # child checks against the known hashes: no second read of the blob from the origin
        s = state()
        join(s, "a", 0)
        report(s, "a", 1, pieces=10, complete=True, hashes=all_hashes())
        join(s, "b", 2)
        view = report(s, "b", 3, failed=["a"])
        assert (view.role, view.fetcher) == ("peer", None)
        assert report(s, "c", 4).role == "peer"

    def test_a_suspect_copy_that_also_went_silent_opens_it_again(self) -> None:
        """The fetcher finished, served a few pieces and died: the last pieces were only on
        it. A live seed announces itself every 10 s; one named failed and silent for
        ``lease_ttl`` is not a copy, and a child fetches the rest (its stall would have
        waited ``stall_timeout`` for the fallback leases)."""
        s = busy(lease_ttl=15.0, peer_ttl=30.0)
        join(s, "a", 0)
        join(s, "b", 0)
        report(s, "a", 1, pieces=10, complete=True, hashes=all_hashes())  # then it died
        for t in (6, 11, 15.9):
            view = report(s, "b", t, pieces=7, failed=["a"] if t == 6 else None)
            assert (view.role, view.fetcher) == ("peer", None)
        assert report(s, "b", 16.1, pieces=7).role == "fetcher"  # silent 15.1 s and suspect

    def test_a_suspect_seed_that_still_announces_stays_a_copy(self) -> None:
        s = busy(lease_ttl=15.0, peer_ttl=30.0)
        join(s, "a", 0)
        join(s, "b", 0)
        report(s, "a", 1, pieces=10, complete=True, hashes=all_hashes())
        report(s, "b", 6, pieces=7, failed=["a"])  # it timed out for b, busy serving others
        report(s, "a", 11, pieces=10, complete=True)  # its seed announcement
        for t in (16.1, 20, 25.9):
            view = report(s, "b", t, pieces=7)
            assert (view.role, view.fetcher) == ("peer", None)

    def test_needed_when_hashes_are_missing_despite_a_complete_peer(self) -> None:
        # e.g. after failing over to this scheduler: seeders re-announce, hashes are gone. The
        # seed takes the lease (to publish them); if it never does, it stalls and loses it.
        s = state(stall_timeout=10.0)
        assert report(s, "seed", 0, pieces=10, complete=True).role == "fetcher"
        view = join(s, "b", 1)
        assert (view.role, view.fetcher) == ("peer", "seed")
        assert [p.peer_id for p in view.parents] == ["seed"]
        report(s, "seed", 9, pieces=10, complete=True)
        view = report(s, "b", 10.5)
        assert (view.role, view.fetcher) == ("fetcher", "b")

    def test_complete_peers_are_made_fetcher_only_while_hashes_are_missing(self) -> None:
        s = state()
        assert join(s, "a", 0).role == "fetcher"
        report(s, "a", 1, pieces=9, hashes=all_hashes())  # every hash, but not complete yet
        view = join(s, "c", 2, complete=True)
        assert (view.role, view.fetcher) == ("peer", None)  # c is a seed: no lease needed
        s.leave(D, "c")
        assert report(s, "a", 3, pieces=9).role == "fetcher"

    def test_suspect_peers_are_not_made_fetcher(self) -> None:
        s = state(lease_ttl=5.0)
        join(s, "a", 0)
        join(s, "b", 0)
        join(s, "c", 0)
        report(s, "c", 1, failed=["b"])
        assert report(s, "b", 6).role == "peer"
        assert report(s, "c", 6.1).role == "fetcher"


class TestHashes:
    """Piece hashes come from the lease holder only, as each report arrives; first value wins."""

    def test_accepted_from_holder(self) -> None:
        s = state()
        join(s, "a", 0)
        view = report(s, "a", 1, pieces=3, hashes={0: h(0), 1: h(1), 2: h(2)})
        assert view.hashes_known == 3
        got = s.hashes(D, 1)
        assert (got.start, got.hashes, got.total) == (1, [h(1), h(2)], 10)

    def test_ignored_from_others(self) -> None:
        s = state()
        join(s, "a", 0)
        join(s, "b", 0)
        report(s, "b", 1, pieces=1, hashes={0: h(99)})
        assert s.hashes(D, 0).hashes == []
        assert s.hashes_ignored == 1

    def test_complete_peer_fills_in_after_a_scheduler_restart(self) -> None:
        """A fresh scheduler has no hashes; a seed re-announcing takes the open lease, its next
        report (with hashes, as ``SwarmSource._announce`` sends it) is the holder's, and then
        no origin fetch (lease) is needed for the blob any more."""
        s = state()
        view = report(s, "seed", 0, pieces=10, complete=True)
        assert (view.role, view.hashes_known) == ("fetcher", 0)
        view = report(s, "seed", 0.1, pieces=10, complete=True, hashes=all_hashes())
        assert (view.hashes_known, view.role, view.fetcher) == (10, "peer", None)
        view = join(s, "newcomer", 0.2)
        assert (view.role, view.fetcher) == ("peer", None)
        assert [p.peer_id for p in view.parents] == ["seed"]

    def test_a_complete_peer_that_is_not_the_holder_cannot_set_hashes(self) -> None:
        s = state()
        join(s, "a", 0)
        report(s, "a", 1, pieces=1, hashes={0: h(0)})
        view = report(s, "liar", 2, pieces=10, complete=True, hashes={0: h(77), 1: h(78), 2: h(79)})
        assert (view.role, view.fetcher, view.hashes_known) == ("peer", "a", 1)
        assert s.hashes(D, 0).hashes == [h(0)]
        assert (s.hashes_ignored, s.hash_conflicts) == (3, 0)
        report(s, "a", 3, pieces=2, hashes={1: h(1)})
        assert s.hashes(D, 0).hashes == [h(0), h(1)]

    def test_hashes_sent_before_anyone_holds_the_lease_are_ignored(self) -> None:
        """Defect 6 of issue 9: a peer claiming ``complete`` with its own hashes before anyone
        held the blob had them accepted, and every child then took its garbage pieces."""
        s = state()
        view = report(s, "liar", 0, pieces=10, complete=True, hashes={i: h(100 + i) for i in range(10)})
        assert view.hashes_known == 0
        assert s.hashes(D, 0).hashes == []
        assert s.hashes_ignored == 10

    def test_a_complete_peer_cannot_take_a_held_lease_to_publish(self) -> None:
        s = state()
        assert join(s, "a", 0).role == "fetcher"
        for t in (1.0, 2.0, 3.0):
            assert report(s, "liar", t, pieces=10, complete=True, hashes={0: h(66)}).role == "peer"
            report(s, "a", t + 0.5, pieces=int(t))
        assert s.hashes(D, 0).hashes == []

    def test_restart_recovery_with_a_live_downloader_goes_to_the_seed(self) -> None:
        """After a restart a downloader re-joins first and takes the lease; the seed's hashes
        wait until the lease is open again (the downloader finishing or going silent)."""
        s = state(lease_ttl=5.0)
        assert join(s, "b", 0, pieces=3).role == "fetcher"
        assert report(s, "seed", 1, pieces=10, complete=True, hashes=all_hashes()).role == "peer"
        assert s.hashes(D, 0).hashes == []
        assert report(s, "seed", 6.5, pieces=10, complete=True).role == "fetcher"  # b went silent
        report(s, "seed", 6.6, pieces=10, complete=True, hashes=all_hashes())
        assert len(s.hashes(D, 0).hashes) == 10

    def test_run_stops_at_first_unknown(self) -> None:
        s = state()
        join(s, "a", 0)
        report(s, "a", 1, hashes={0: h(0), 2: h(2)})
        assert s.hashes(D, 0).hashes == [h(0)]
        assert s.hashes(D, 1).hashes == []
        assert s.hashes(D, 2).hashes == [h(2)]

    def test_conflicting_hash_rejected_and_counted(self) -> None:
        s = state(lease_ttl=5.0)
        join(s, "a", 0)
        join(s, "b", 0)
        report(s, "a", 1, pieces=1, hashes={0: h(0)})
        assert report(s, "b", 7, pieces=1).role == "fetcher"
        report(s, "b", 7.5, pieces=2, hashes={0: h(50), 1: h(1)})
        assert s.hashes(D, 0).hashes == [h(0), h(1)]
        assert s.hash_conflicts == 1

    def test_earlier_holders_hashes_stay_valid(self) -> None:
        s = state()
        join(s, "a", 0)
        report(s, "a", 1, pieces=2, hashes={0: h(0), 1: h(1)})
        s.leave(D, "a")
        assert s.hashes(D, 0).hashes == [h(0), h(1)]

    def test_unknown_task_is_empty(self) -> None:
        assert state().hashes(E, 0).total == 0

    def test_long_polls_from_one_start_share_one_answer_until_a_hash_arrives(self) -> None:
        """A rollout's waiting peers all ask from the same start: one answer is built for them
        all, and a new hash (or a reset) builds the next one."""
        s = state()
        join(s, "a", 0)
        report(s, "a", 1, pieces=1, hashes={0: h(0)})
        first = s.hashes(D, 0)
        assert s.hashes(D, 0) is first
        empty = s.hashes(D, 1)
        assert (empty.hashes, s.hashes(D, 1)) == ([], empty)
        report(s, "a", 2, pieces=2, hashes={1: h(1)})
        assert s.hashes(D, 0).hashes == [h(0), h(1)]
        assert s.hashes(D, 1).hashes == [h(1)]
        assert first.hashes == [h(0)]  # an answer already handed out is never changed
        report(s, "a", 3, pieces=3, hashes={1: h(1), 3: h(3)})  # a repeat and a gap
        assert s.hashes(D, 2).hashes == []
        assert s.hashes(D, 3).hashes == [h(3)]
        report(s, "a", 4, pieces=4, hashes={2: h(2)})
        assert s.hashes(D, 2).hashes == [h(2), h(3)]

    def test_a_late_joiners_long_run_is_built_for_it_alone(self) -> None:
        """Kept answers are short: keeping every start's run of a 65,536-piece blob would hold
        billions of references."""
        s = state()
        size, piece = 2048 * MiB, 16 * MiB  # 128 pieces
        s.join(D, JoinRequest("a", "a:1", size, piece), 0)
        s.report(D, Report("a", "a:1", 128, size, hashes={i: h(i) for i in range(128)}), 1)
        assert s.hashes(D, 0).hashes == [h(i) for i in range(128)]
        assert s.hashes(D, 0) is not s.hashes(D, 0)
        assert s.hashes(D, 100) is s.hashes(D, 100)
        for start in range(130):
            assert s.hashes(D, start).hashes == [h(i) for i in range(start, 128)]
        assert len(s.tasks[D].views) <= 8

    @pytest.mark.parametrize("hashes", [{10: h(10)}, {-1: h(0)}, {0: "xyz"}, {0: h(0xABC).upper()}])
    def test_bad_hashes_are_errors(self, hashes: dict[int, str]) -> None:
        s = state()
        join(s, "a", 0)
        with pytest.raises(StateError):
            report(s, "a", 1, hashes=hashes)


class TestParents:
    """Who is handed out as a parent."""

    def test_fetcher_is_a_parent_before_anyone_has_pieces(self) -> None:
        s = state()
        join(s, "a", 0)
        view = join(s, "b", 0)
        assert [p.peer_id for p in view.parents] == ["a"]
        assert view.parents[0].address == "a:1"

    def test_never_yourself_but_peers_without_pieces_yet(self) -> None:
        # b holds nothing yet, but will (and pushes what it gets): handing out only early
        # holders made every downloader a child of the same few nodes
        s = state()
        join(s, "a", 0)
        join(s, "b", 0)
        view = join(s, "c", 0)
        assert sorted(p.peer_id for p in view.parents) == ["a", "b"]
        assert sorted(p.peer_id for p in report(s, "a", 1).parents) == ["b", "c"]

    def test_holders_below_the_child_cap_come_before_empty_peers(self) -> None:
        s = state(max_parents=1, max_children=2)
        join(s, "a", 0)
        report(s, "a", 0, pieces=3)
        assert [p.peer_id for p in join(s, "b", 0).parents] == ["a"]
        assert [p.peer_id for p in join(s, "c", 0).parents] == ["a"]
        # a has its two children now: an empty peer takes the next one
        assert [p.peer_id for p in join(s, "d", 0).parents] in (["b"], ["c"])

    def test_complete_peers_come_first(self) -> None:
        s = state(max_parents=2)
        join(s, "a", 0)
        join(s, "p", 0)
        report(s, "p", 1, pieces=9)
        join(s, "seed", 1, complete=True)
        view = join(s, "new", 2)
        assert view.parents[0].peer_id == "seed"
        assert len(view.parents) == 2

    def test_failed_parents_are_avoided_until_suspect_ttl(self) -> None:
        s = state(suspect_ttl=60.0)
        join(s, "a", 0)
        for peer in "bc":
            join(s, peer, 0)
            report(s, peer, 1, pieces=3)
        report(s, "c", 2, pieces=3, failed=["b"])
        assert "b" not in [p.peer_id for p in join(s, "d", 3).parents]
        s.expire(70)
        for peer in "ac":
            report(s, peer, 70, pieces=4)
        report(s, "b", 70, pieces=4)
        assert "b" in [p.peer_id for p in join(s, "e", 71).parents]

    def test_a_reported_parent_is_dropped_from_the_next_answer(self) -> None:
        s = state()
        join(s, "a", 0)
        join(s, "b", 0)
        report(s, "b", 0.5, pieces=2)
        assert {p.peer_id for p in join(s, "c", 1).parents} == {"a", "b"}
        assert {p.peer_id for p in report(s, "c", 1.5, failed=["b"]).parents} == {"a"}

    def test_children_are_spread_over_parents(self) -> None:
        s = state(max_parents=1, max_children=2)
        join(s, "a", 0)
        report(s, "a", 0, pieces=10, complete=True, hashes=all_hashes())
        for peer in "bcd":
            join(s, peer, 0, complete=True)
        counts: dict[str, int] = {}
        for i in range(8):
            (parent,) = join(s, f"child{i}", 1).parents
            counts[parent.peer_id] = counts.get(parent.peer_id, 0) + 1
        assert counts == {"a": 2, "b": 2, "c": 2, "d": 2}

    def test_parents_are_kept_across_reports_and_not_recounted(self) -> None:
        s = state(max_parents=2)
        for peer in "abc":
            join(s, peer, 0, complete=True)
        first = [p.peer_id for p in join(s, "x", 1).parents]
        for t in range(2, 10):
            assert [p.peer_id for p in report(s, "x", t).parents] == first
        assert sum(s.peers[p].children(10, 30.0) for p in "abc") == 2

    def test_complete_requesters_get_no_parents(self) -> None:
        s = state()
        join(s, "a", 0, complete=True)
        assert join(s, "b", 0, complete=True).parents == []

    def test_large_task_answers_stay_bounded(self) -> None:
        s = state(max_parents=6)
        for i in range(2000):
            join(s, f"p{i}", 0)
            report(s, f"p{i}", 0, pieces=1 + i % 9)
        view = join(s, "late", 1)
        assert len(view.parents) == 6
        assert len({p.peer_id for p in view.parents}) == 6


class TestLoad:
    """A parent's load counts the children handed to it recently, over all tasks."""

    def test_counts_decay_over_the_window(self) -> None:
        s = state(child_window=30.0, max_parents=1)
        join(s, "p", 0)
        report(s, "p", 0, pieces=10, complete=True, hashes=all_hashes())
        for i in range(4):
            join(s, f"c{i}", 1)
        join(s, "q", 1, digest=E, complete=True)
        join(s, "c9", 2, digest=E)
        load = s.peers["p"]
        assert load.children(2, 30.0) == 4
        assert s.peers["q"].children(2, 30.0) == 1
        assert load.children(45, 30.0) == 2  # half of the last window still counts
        assert load.children(61, 30.0) == 0


class TestLifecycle:
    """Soft state: peers and tasks expire; bad requests are refused."""

    def test_expire_drops_dead_peers_and_their_lease(self) -> None:
        s = state(peer_ttl=30.0)
        join(s, "a", 0)
        join(s, "b", 0)
        report(s, "b", 4)
        s.expire(31)
        assert set(s.tasks[D].members) == {"b"}
        assert s.tasks[D].holder is None
        assert s.stats().peers == 1
        assert report(s, "b", 32).role == "fetcher"

    def test_expire_drops_idle_tasks_and_empty_ones(self) -> None:
        s = state(peer_ttl=30.0, task_ttl=100.0)
        join(s, "a", 0)
        report(s, "a", 1, hashes={0: h(0)})
        join(s, "b", 0, digest=E)
        s.expire(50)
        assert set(s.tasks) == {D}  # E had no hashes; D's hashes are kept
        s.expire(102)
        assert s.tasks == {}
        assert s.peers == {}

    def test_report_creates_task_for_an_announcing_seed(self) -> None:
        s = state()
        report(s, "seed", 0, pieces=10, complete=True)
        assert s.stats().tasks == 1

    def test_report_for_unknown_task_without_size_is_refused(self) -> None:
        s = state()
        with pytest.raises(UnknownTaskError):
            s.report(D, Report("a", "a:1", pieces=0, contiguous=0), 0)

    def test_size_conflict_is_refused(self) -> None:
        s = state()
        join(s, "a", 0)
        with pytest.raises(ConflictError):
            s.join(D, JoinRequest("b", "b:1", SIZE + 1, MiB), 1)

    @pytest.mark.parametrize(
        ("size", "piece_size", "pieces", "contiguous", "error"),
        [
            (SIZE, MiB, 11, 0, StateError),  # more pieces than the blob has
            (SIZE, MiB, 1, SIZE + 1, StateError),
            (SIZE + 1, MiB, 1, 0, ConflictError),  # the task's checks are not skipped for a new size
            (SIZE, 2 * MiB, 1, 0, StateError),
        ],
    )
    def test_a_known_tasks_reports_are_still_checked(
        self, size: int, piece_size: int, pieces: int, contiguous: int, error: type[Exception]
    ) -> None:
        s = state()
        join(s, "a", 0)
        rep = Report("a", "a:1", pieces, contiguous, size=size, piece_size=piece_size)
        with pytest.raises(error):
            s.report(D, rep, 1)
        task = s.tasks[D]
        assert (task.size, task.piece_size, task.total, task.last_active) == (SIZE, MiB, 10, 0)
        assert s.report(D, Report("a", "a:1", 2, 2 * MiB, size=SIZE, piece_size=MiB), 2).size == SIZE
        assert (task.members["a"].pieces, task.last_active) == (2, 2)

    def test_stats_count_calls(self) -> None:
        s = state()
        join(s, "a", 0)
        join(s, "b", 0, digest=E)
        report(s, "a", 1)
        st = s.stats()
        assert (st.tasks, st.peers, st.joins, st.reports, st.lease_changes) == (2, 2, 2, 1, 2)


class TestBounds:
    """Defect 7 of issue 9: a task's size and piece size are bounded, so is its memory."""

    def test_piece_size_must_be_the_agents_rule(self) -> None:
        s = state()
        with pytest.raises(StateError, match="pieces of 2097152"):
            s.join(D, JoinRequest("a", "a:1", 100_000_000, 1), 0)
        assert s.tasks == {}
        view = s.join(D, JoinRequest("a", "a:1", 100_000_000, choose_piece_size(100_000_000)), 0)
        assert view.piece_size == 2 * MiB

    def test_size_is_bounded_by_max_blob_size(self) -> None:
        s = state(max_blob_size=1 << 30)
        big = (1 << 30) + 1
        with pytest.raises(StateError, match=r"want 0\.\.1073741824"):
            s.join(D, JoinRequest("a", "a:1", big, choose_piece_size(big)), 0)
        with pytest.raises(StateError):
            s.report(D, Report("a", "a:1", 0, 0, size=10**20, piece_size=choose_piece_size(10**20)), 0)
        assert s.tasks == {}

    def test_a_task_holds_no_more_hashes_than_pieces(self) -> None:
        """Joining the largest allowed blob costs a few hundred bytes, not a list per piece;
        the hash list appears with the first hash and has one entry per piece."""
        s = state()
        size = s.config.max_blob_size
        piece = choose_piece_size(size)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            s.join(D, JoinRequest("a", "a:1", size, piece), 0)
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert grown < 16 * 1024, grown
        task = s.tasks[D]
        assert task.hashes == []
        assert task.total == piece_count(size, piece) == 65_536
        s.report(D, Report("a", "a:1", 1, piece, hashes={0: h(0)}), 1)
        assert len(task.hashes) == task.total

    def test_task_count_is_bounded(self) -> None:
        s = state(max_tasks=2)
        join(s, "a", 0)
        join(s, "a", 0, digest=E)
        with pytest.raises(FullError, match="scheduler full"):
            join(s, "a", 0, digest="sha256:" + "c" * 64)
        report(s, "a", 1)  # known tasks still work
        s.leave(E, "a")
        join(s, "a", 2, digest="sha256:" + "c" * 64)

    def test_zero_byte_blob(self) -> None:
        s = state()
        view = s.join(D, JoinRequest("a", "a:1", 0, choose_piece_size(0)), 0)
        assert (view.size, s.tasks[D].total) == (0, 0)


class TestWrongHashes:
    """A holder that published wrong hashes loses them once a downloader's blob proves them wrong."""

    def poisoned(self) -> SchedulerState:
        s = state(lease_ttl=5.0)
        assert report(s, "liar", 0, pieces=10, complete=True).role == "fetcher"
        report(s, "liar", 0.1, pieces=10, complete=True, hashes={i: h(100 + i) for i in range(10)})
        assert len(s.hashes(D, 0).hashes) == 10
        join(s, "child", 1)
        return s

    def test_blamed_publisher_loses_its_hashes_and_a_seed_republishes(self) -> None:
        s = self.poisoned()
        view = bad_hashes(s, "child", 2, ["liar"])
        assert (view.hashes_known, view.role) == (0, "peer")  # the reporter refetches on its own
        assert s.hashes(D, 0).hashes == []
        assert [(r.reporter, r.blamed) for r in s.resets] == [("child", ("liar",))]
        assert s.hash_resets == 1
        # the liar is a suspect now: its announcements neither take the lease nor publish
        assert report(s, "liar", 3, pieces=10, complete=True, hashes={0: h(100)}).role == "peer"
        assert s.hashes(D, 0).hashes == []
        # the child, done from the origin, announces and republishes through the lease
        assert report(s, "child", 4, pieces=10, complete=True).role == "fetcher"
        report(s, "child", 4.1, pieces=10, complete=True, hashes=all_hashes())
        assert s.hashes(D, 0).hashes == [h(i) for i in range(10)]

    def test_the_blamed_holder_loses_the_lease(self) -> None:
        s = state()
        join(s, "liar", 0)
        report(s, "liar", 1, pieces=2, hashes={0: h(50), 1: h(51)})
        join(s, "child", 1)
        bad_hashes(s, "child", 2, ["liar"])
        assert s.tasks[D].holder is None
        assert report(s, "other", 2.5, pieces=1).role == "fetcher"

    def test_naming_only_peers_that_published_nothing_keeps_the_hashes(self) -> None:
        s = self.poisoned()
        bad_hashes(s, "child", 2, ["someone", "child"])
        assert len(s.hashes(D, 0).hashes) == 10
        assert s.hash_resets == 0

    def test_without_the_flag_failed_parents_keep_the_hashes(self) -> None:
        """A parent that timed out is a suspect, not proof that the hashes are wrong."""
        s = self.poisoned()
        report(s, "child", 2, failed=["liar"])
        assert len(s.hashes(D, 0).hashes) == 10

    def test_at_most_one_reset_per_lease_ttl(self) -> None:
        s = self.poisoned()
        bad_hashes(s, "child", 2, ["liar"])
        assert report(s, "honest", 2.5, pieces=1).role == "fetcher"
        report(s, "honest", 3, pieces=2, hashes={0: h(0), 1: h(1)})
        bad_hashes(s, "child2", 4, ["honest"])  # within lease_ttl of the last reset: ignored
        assert s.hashes(D, 0).hashes == [h(0), h(1)]
        bad_hashes(s, "child2", 8, ["honest"])
        assert s.hashes(D, 0).hashes == []
        assert s.hash_resets == 2

    def test_a_suspect_cannot_reset(self) -> None:
        s = self.poisoned()
        report(s, "child", 2, failed=["grudge"])
        bad_hashes(s, "grudge", 3, ["liar"])
        assert len(s.hashes(D, 0).hashes) == 10


def ask_fallback(s: SchedulerState, peer: str, now: float, *, complete: bool = False) -> TaskView:
    rep = Report(peer, f"{peer}:1", 0, 0, complete=complete, size=SIZE, piece_size=MiB, wants_fallback=True)
    return s.report(D, rep, now)


class TestFallbackLeases:
    """Overload without stampede: of the downloads of one blob that stalled, at most
    ``fallback_leases`` go to the origin at a time; a lease ends ``lease_ttl`` after its
    holder's last report, or when it reports the blob complete."""

    def test_only_a_few_stalled_downloads_may_go_to_the_origin(self) -> None:
        s = state(fallback_leases=2)
        join(s, "fetcher", 0.0)
        for peer in ("a", "b", "c", "d"):
            join(s, peer, 0.0)
        granted = [ask_fallback(s, p, 1.0).fallback for p in ("a", "b", "c", "d")]
        assert granted == [True, True, False, False]
        assert (s.fallbacks_granted, s.fallbacks_refused) == (2, 2)
        assert ask_fallback(s, "a", 2.0).fallback  # a holder asking again keeps its lease
        assert not report(s, "c", 2.0).fallback  # a report without the ask says "not yours"

    def test_a_lease_ends_when_its_holder_falls_silent_or_completes(self) -> None:
        s = state(fallback_leases=1, lease_ttl=15.0)
        join(s, "fetcher", 0.0)
        for peer in ("a", "b", "c"):
            join(s, peer, 0.0)
        assert ask_fallback(s, "a", 1.0).fallback
        assert not ask_fallback(s, "b", 10.0).fallback
        assert report(s, "a", 12.0, pieces=3).fallback  # still its lease, renewed
        assert not ask_fallback(s, "b", 20.0).fallback
        assert ask_fallback(s, "b", 27.1).fallback  # a's lease ran out 15 s after its last report
        report(s, "b", 28.0, complete=True, pieces=10, hashes=all_hashes())
        view = ask_fallback(s, "c", 28.5)
        assert not view.fallback  # b is a complete copy in the swarm: take it from there
        assert "b" in [p.peer_id for p in view.parents]
        s.leave(D, "b")
        assert ask_fallback(s, "c", 29.0).fallback  # the copy left: the registry it is

    def test_a_refused_ask_names_the_complete_copy_it_was_refused_for(self) -> None:
        # The lab's stuck rollout: the fetcher was named in failed_parents (a crossed dial),
        # so every child's answer left it out and their four places filled with each other;
        # it finished while still suspect. Every child then stalled on the pieces only the
        # fetcher had, and each ask was refused "for the complete copy's sake" by an answer
        # that named four partial parents: the child neither took the copy nor gave up.
        s = state(max_parents=4, fallback_leases=2)
        join(s, "fetcher", 0.0)
        children = [f"c{i}" for i in range(6)]
        for peer in children:
            join(s, peer, 0.1)
        report(s, "c0", 0.2, pieces=1, failed=["fetcher"])
        for peer in children:
            report(s, peer, 0.3, pieces=1)
            assert "fetcher" not in [p.peer_id for p in report(s, peer, 0.4, pieces=1).parents]
        report(s, "fetcher", 1.0, pieces=10, complete=True, hashes=all_hashes())
        now = 1.0
        while now < 70.0:  # past suspect_ttl: everyone keeps reporting, nothing new
            now += 10.0
            report(s, "fetcher", now, pieces=10, complete=True)
            for peer in children:
                report(s, peer, now, pieces=1)
        view = ask_fallback(s, "c3", now + 1)
        assert not view.fallback
        assert "fetcher" in [p.peer_id for p in view.parents]  # the copy the ask was refused for
        assert len(view.parents) <= 4

    def test_a_copy_the_answer_cannot_name_does_not_refuse_the_ask(self) -> None:
        s = state(fallback_leases=1)
        join(s, "fetcher", 0.0)
        join(s, "a", 0.1)
        report(s, "fetcher", 1.0, pieces=10, complete=True, hashes=all_hashes())
        report(s, "a", 2.0, failed=["fetcher"])  # the only copy is suspect: no parent of anyone's
        view = ask_fallback(s, "a", 3.0)
        assert "fetcher" not in [p.peer_id for p in view.parents]
        assert view.fallback  # refused, it would wait for a copy nobody may name for suspect_ttl

    def test_a_refused_ask_names_a_copy_of_the_askers_zone_when_there_is_one(self) -> None:
        # the first seeder found was named whatever its zone: a zone fed by a gateway got a
        # second link into another zone, though a copy of its own zone was a parent already
        s = state(fallback_leases=1)
        s.join(D, JoinRequest("far", "far:1", SIZE, MiB, zone="b"), 0.0)
        report(s, "far", 1.0, pieces=10, complete=True, hashes=all_hashes())
        s.join(D, JoinRequest("near", "near:1", SIZE, MiB, zone="a"), 1.1)
        report(s, "near", 2.0, pieces=10, complete=True)
        s.join(D, JoinRequest("x", "x:1", SIZE, MiB, zone="a"), 2.1)
        view = ask_fallback(s, "x", 3.0)
        assert not view.fallback
        assert [p.peer_id for p in view.parents] == ["near"]

    def test_the_answer_reaches_the_wire(self) -> None:
        from shoal.p2p.protocol import dumps, loads

        s = state()
        join(s, "a", 0.0)
        view = ask_fallback(s, "a", 1.0)
        assert loads(dumps(view))["fallback"] is (view.fallback is True)


class TestFallbackHoldersHashes:
    """A fallback lease holder that completed publishes its piece hashes (it checked the blob
    against its digest, like any holder), so the stalled others can take its copy; a peer
    without a lease still cannot."""

    def test_a_completed_fallback_holder_publishes_and_others_take_its_copy(self) -> None:
        s = state(fallback_leases=1)
        join(s, "fetcher", 0.0)  # holds the lease, then stalls (keeps reporting nothing new)
        for peer in ("a", "b"):
            join(s, peer, 0.0)
        assert ask_fallback(s, "a", 1.0).fallback
        assert not ask_fallback(s, "b", 1.5).fallback  # the one lease is a's
        report(s, "a", 4.0, pieces=10, complete=True, hashes=all_hashes())
        assert s.tasks[D].hashes_known == 10
        view = ask_fallback(s, "b", 5.0)
        assert not view.fallback  # a's copy can be checked: take it from the swarm
        assert "a" in [p.peer_id for p in view.parents]

    def test_a_complete_copy_without_hashes_does_not_block_the_fallback(self) -> None:
        s = state(fallback_leases=1)
        join(s, "fetcher", 0.0)
        for peer in ("a", "b"):
            join(s, peer, 0.0)
        report(s, "a", 1.0, pieces=10, complete=True, hashes=all_hashes())  # no lease: ignored
        assert s.tasks[D].hashes_known == 0
        assert ask_fallback(s, "b", 2.0).fallback


class TestZones:
    """Parents in the downloader's zone first; one member per zone takes a blob from others."""

    def zjoin(self, s: SchedulerState, peer: str, zone: str, now: float) -> list[str]:
        view = s.join(D, JoinRequest(peer, f"{peer}:1", SIZE, MiB, zone=zone), now)
        return [p.peer_id for p in view.parents]

    def test_one_gateway_per_zone_the_rest_stay_in_their_zone(self) -> None:
        s = state(max_parents=4)
        self.zjoin(s, "a1", "a", 0)  # the fetcher, in zone a
        for i in range(2, 5):
            assert self.zjoin(s, f"a{i}", "a", 0.1) != []
        first_b = self.zjoin(s, "b1", "b", 0.2)
        assert first_b  # only zone a holds anything: b1 takes it from there
        for i in range(2, 6):
            parents = self.zjoin(s, f"b{i}", "b", 0.3)
            assert parents
            assert all(p.startswith("b") for p in parents), parents

    def test_a_dead_gateway_is_replaced(self) -> None:
        s = state(max_parents=4, peer_ttl=30.0)
        self.zjoin(s, "a1", "a", 0)
        self.zjoin(s, "b1", "b", 1)
        assert all(p.startswith("b") for p in self.zjoin(s, "b2", "b", 1))
        # b1 goes silent; a1 and b2 keep reporting
        report(s, "a1", 35, pieces=4)
        view = s.report(D, Report("b2", "b2:1", pieces=0, contiguous=0, size=SIZE, piece_size=MiB, zone="b"), 36)
        assert "a1" in [p.peer_id for p in view.parents]

    def test_gateways_spread_over_members(self) -> None:
        s = state(max_parents=4)
        for digest in (D, E):
            s.join(digest, JoinRequest("a1", "a1:1", SIZE, MiB, zone="a"), 0)
        assert "a1" in self.zjoin(s, "b1", "b", 0.1)  # b1 brings D into zone b
        # E is young and b1 already a gateway: zone a's peers are left to another member
        assert s.join(E, JoinRequest("b1", "b1:1", SIZE, MiB, zone="b"), 0.1).parents == []
        view = s.join(E, JoinRequest("b2", "b2:1", SIZE, MiB, zone="b"), 0.2)
        assert "a1" in [p.peer_id for p in view.parents]

    def test_a_lone_member_brings_every_blob_after_the_wait(self) -> None:
        s = state(max_parents=4)
        for digest in (D, E):
            s.join(digest, JoinRequest("a1", "a1:1", SIZE, MiB, zone="a"), 0)
        self.zjoin(s, "b1", "b", 0.1)
        assert s.join(E, JoinRequest("b1", "b1:1", SIZE, MiB, zone="b"), 0.1).parents == []
        rep = Report("b1", "b1:1", pieces=0, contiguous=0, size=SIZE, piece_size=MiB, zone="b")
        assert [p.peer_id for p in s.report(E, rep, 1.5).parents] == ["a1"]

    def test_unknown_zones_mix_freely(self) -> None:
        s = state(max_parents=4)
        self.zjoin(s, "x", "", 0)
        assert self.zjoin(s, "y", "b", 0) == ["x"]
        assert sorted(self.zjoin(s, "z", "", 0)) == ["x", "y"]


class TestRefusalsNameTheCopyInPlaceOfALostParent:
    def test_the_copy_takes_the_place_of_a_parent_the_ask_names_failed(self) -> None:
        # The copy took the place of the live parent with the fewest pieces though the ask
        # named another of the asker's parents failed: that one left the answer anyway, so the
        # asker lost two parents (one healthy) for the copy and a random newcomer.
        s = state(max_parents=4, fallback_leases=1)
        join(s, "fetcher", 0.0)
        for i, peer in enumerate(("p1", "p2", "p3", "p4", "p5")):
            join(s, peer, 0.1)
            report(s, peer, 0.2, pieces=2 + i)
        join(s, "a", 0.3)
        report(s, "fetcher", 0.4, pieces=9, hashes=all_hashes())  # every hash known
        join(s, "x", 0.5, pieces=10, complete=True)  # a complete copy, not a's parent
        handed = s.tasks[D].members["a"].handed
        assert len(handed) == 4
        assert "x" not in handed
        partial = sorted((p for p in handed if p != "fetcher"), key=lambda p: s.tasks[D].members[p].pieces)
        fewest, failed = partial[0], partial[-1]
        rep = Report("a", "a:1", 0, 0, failed_parents=[failed], size=SIZE, piece_size=MiB, wants_fallback=True)
        view = s.report(D, rep, 1.0)
        parents = [p.peer_id for p in view.parents]
        assert not view.fallback
        assert "x" in parents
        assert failed not in parents
        assert fewest in parents, (handed, parents)
