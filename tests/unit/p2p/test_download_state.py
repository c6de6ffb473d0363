"""The swarm's rules against the pure download state, with a fake clock (see test_swarm.py for the
same rules proven with real processes)."""

from __future__ import annotations

import hashlib

import pytest

from shoal.p2p.download_state import (
    MOVED,
    Action,
    AddParent,
    AnnouncePieces,
    AskFallback,
    BytesArrived,
    CancelRequest,
    Complete,
    DiscardPiece,
    DownloadRules,
    DownloadState,
    DropParent,
    FallbackAnswer,
    GiveUp,
    HashesKnown,
    OriginFetchFailed,
    ParentHas,
    ParentInfo,
    ParentLost,
    PieceArrived,
    PieceFailed,
    PieceRejected,
    PieceWritten,
    PrefixAdvanced,
    RequestPiece,
    SchedulerAnswer,
    SchedulerFailed,
    StartOriginFetch,
    StopOriginFetch,
    Tick,
    WritePiece,
)
from shoal.p2p.pieces import PieceGeometry

PIECE = 100
PIECES = 8
ME = "me"
HASHES = {i: hashlib.sha256(f"piece {i}".encode()).hexdigest() for i in range(PIECES)}


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def parent(n: int) -> ParentInfo:
    return ParentInfo(f"p{n}", f"10.0.0.{n}:65001")


def new(clock: Clock | None = None, avoided: dict[str, float] | None = None, **rules: float) -> DownloadState:
    return DownloadState(
        peer_id=ME,
        size=PIECES * PIECE,
        piece_size=PIECE,
        rules=DownloadRules(**rules),  # type: ignore[arg-type]  # ints and floats by name
        clock=clock or Clock(),
        avoided=avoided,
        salt="me/sha256:x",
    )


def requests(actions: list[Action]) -> list[tuple[str, int]]:
    return [(a.peer_id, a.index) for a in actions if isinstance(a, RequestPiece)]


def with_parents(s: DownloadState, *ns: int) -> list[Action]:
    return s.apply(SchedulerAnswer(fetcher="origin-holder", parents=tuple(parent(n) for n in ns)))


def deliver(s: DownloadState, peer: str, index: int, sha: str | None = None) -> list[Action]:
    out = s.apply(PieceArrived(peer, index, sha or HASHES[index]))
    if any(isinstance(a, WritePiece) and a.index == index for a in out):
        out += s.apply(PieceWritten(index))
    return out


class TestGeometry:
    """The state takes the download's one geometry value, or a size and a piece size."""

    def test_geometry_and_size_agree(self) -> None:
        g = PieceGeometry(PIECES * PIECE - 7, PIECE)
        s = DownloadState(peer_id=ME, geometry=g)
        assert (s.geometry, s.size, s.piece_size, s.count) == (g, g.size, PIECE, PIECES)
        assert s.missing == set(range(PIECES))
        assert DownloadState(peer_id=ME, size=g.size, piece_size=PIECE).geometry == g

    def test_neither_is_refused(self) -> None:
        with pytest.raises(TypeError, match="geometry"):
            DownloadState(peer_id=ME)


class TestOriginOnce:
    """Only the lease holder reads the origin (test_swarm: TestRollout, the lease tests)."""

    def test_the_lease_starts_one_origin_fetch(self) -> None:
        s = new()
        assert s.apply(SchedulerAnswer(fetcher=ME)) == [StartOriginFetch(0)]
        assert s.apply(SchedulerAnswer(fetcher=ME)) == []

    def test_a_lease_moved_elsewhere_stops_ours(self) -> None:
        """test_fetcher_that_lost_its_lease_stops_fetching"""
        s = new(lanes_per_parent=2)
        s.apply(SchedulerAnswer(fetcher=ME))
        s.apply(PrefixAdvanced(250))
        out = s.apply(SchedulerAnswer(fetcher="p2", parents=(parent(2),)))
        assert out[:2] == [StopOriginFetch("p2"), AddParent(parent(2))]
        assert not s.fetching
        # the rest comes from the new holder like any child: pieces 0 and 1 are ours already
        asked = requests(s.apply(ParentHas("p2", frozenset(range(PIECES)))))
        assert len(asked) == 2
        assert {i for _, i in asked} <= set(range(2, PIECES))

    def test_no_holder_named_keeps_our_fetch(self) -> None:
        s = new()
        s.apply(SchedulerAnswer(fetcher=ME))
        assert s.apply(SchedulerAnswer(fetcher=None)) == []
        assert s.fetching

    def test_the_lease_after_a_dead_fetcher_starts_from_our_prefix(self) -> None:
        """test_fetcher_killed_mid_blob: the successor fetches only what the swarm lacks."""
        s = new()
        with_parents(s, 1)
        s.apply(HashesKnown(HASHES))
        s.apply(ParentHas("p1", frozenset({0, 1, 2})))
        for i in (0, 1, 2):
            deliver(s, "p1", i)
        s.apply(PrefixAdvanced(300))
        s.apply(ParentLost("p1", "connection reset"))
        assert s.apply(SchedulerAnswer(fetcher=ME)) == [StartOriginFetch(300)]

    def test_the_fetcher_does_not_stall(self) -> None:
        clock = Clock()
        s = new(clock)
        s.apply(SchedulerAnswer(fetcher=ME))
        clock.now += 1000
        assert s.apply(Tick()) == []

    def test_a_failed_origin_fetch_gives_up(self) -> None:
        s = new()
        s.apply(SchedulerAnswer(fetcher=ME))
        assert s.apply(OriginFetchFailed("HTTP 500")) == [GiveUp("origin: HTTP 500")]
        assert s.apply(Tick()) == []  # finished: nothing more


class TestPipelining:
    """Pieces are asked for as soon as a parent announces them (test_child_gets_bytes_before_the_fetcher_is_done)."""

    def test_each_have_is_requested_at_once(self) -> None:
        s = new(lanes_per_parent=2)
        assert with_parents(s, 1) == [AddParent(parent(1))]
        assert requests(s.apply(ParentHas("p1", frozenset({0})))) == [("p1", 0)]
        assert requests(s.apply(ParentHas("p1", frozenset({1})))) == [("p1", 1)]
        assert requests(s.apply(ParentHas("p1", frozenset({2})))) == []  # both lanes busy
        s.apply(HashesKnown({0: HASHES[0]}))
        assert requests(deliver(s, "p1", 0)) == [("p1", 2)]  # a lane freed: the next piece goes out

    def test_a_parent_without_pieces_is_not_asked(self) -> None:
        s = new()
        with_parents(s, 1)
        assert requests(s.apply(Tick())) == []


class TestBoundedAsking:
    """At most max_parents parents, lanes_per_parent requests each, one parent per piece."""

    def test_max_parents_and_never_ourselves(self) -> None:
        s = new(max_parents=2)
        out = s.apply(SchedulerAnswer(fetcher="x", parents=(ParentInfo(ME, "a"), parent(1), parent(2), parent(3))))
        assert out == [AddParent(parent(1)), AddParent(parent(2))]
        assert with_parents(s, 1, 2, 4) == []

    def test_lanes_and_no_piece_asked_twice(self) -> None:
        s = new(lanes_per_parent=3)
        with_parents(s, 1, 2)
        first = requests(s.apply(ParentHas("p1", frozenset(range(PIECES)))))
        second = requests(s.apply(ParentHas("p2", frozenset(range(PIECES)))))
        assert len(first) == 3
        assert len(second) == 3
        assert not {i for _, i in first} & {i for _, i in second}
        assert s.in_flight == {i: p for p, i in first + second}


class TestMovedParents:
    """A full download takes a parent the scheduler newly names in place of one it no longer
    names (the scheduler moves children off overloaded parents)."""

    def test_the_parent_no_longer_named_gives_way_unbanned(self) -> None:
        s = new(max_parents=2)
        with_parents(s, 1, 2)
        out = with_parents(s, 1, 3)
        assert [a for a in out if isinstance(a, DropParent | AddParent)] == [
            DropParent("p2", MOVED),
            AddParent(parent(3)),
        ]
        assert set(s.parents) == {"p1", "p3"}
        assert s.unreported_failures == set()  # not a failure: nothing to tell the scheduler
        assert [a for a in with_parents(s, 2, 3) if isinstance(a, DropParent | AddParent)] == [
            DropParent("p1", MOVED),
            AddParent(parent(2)),
        ]  # p2 was not banned: it may come back

    def test_a_full_download_keeps_parents_the_answer_still_names(self) -> None:
        s = new(max_parents=2)
        with_parents(s, 1, 2)
        assert with_parents(s, 3, 1, 2) == []
        assert set(s.parents) == {"p1", "p2"}

    def test_an_answer_naming_none_of_ours_swaps_nothing(self) -> None:
        """Another replica after a failover does not know our parents: they keep working."""
        s = new(max_parents=2)
        with_parents(s, 1, 2)
        assert with_parents(s, 3, 4) == []
        assert set(s.parents) == {"p1", "p2"}

    def test_the_moved_parents_request_goes_to_the_new_one(self) -> None:
        s = new(max_parents=2)
        with_parents(s, 1, 3)
        assert requests(s.apply(ParentHas("p1", frozenset({5})))) == [("p1", 5)]
        with_parents(s, 3, 2)
        assert s.in_flight == {}
        assert requests(s.apply(ParentHas("p2", frozenset({5})))) == [("p2", 5)]

    def test_a_moved_parents_piece_in_flight_is_cancelled(self) -> None:
        """The moved-from parent is healthy and the heaviest: its queued piece must not be sent
        for nothing (NOT_INTERESTED does not empty its queue)."""
        s = new(max_parents=2)
        with_parents(s, 1, 3)
        assert requests(s.apply(ParentHas("p1", frozenset({5})))) == [("p1", 5)]
        out = with_parents(s, 3, 2)
        assert DropParent("p1", MOVED) in out
        assert CancelRequest("p1", 5) in out
        assert out.index(CancelRequest("p1", 5)) < out.index(DropParent("p1", MOVED))

    def test_an_answer_naming_one_of_ours_swaps_one_parent_at_most(self) -> None:
        """A new replica after a failover hands fresh parents; naming one of ours by chance (a
        popular seeder) must not drop every working parent it does not know at once."""
        s = new(max_parents=3)
        with_parents(s, 1, 2, 3)
        out = with_parents(s, 1, 4, 5)
        dropped = [a for a in out if isinstance(a, DropParent)]
        added = [a for a in out if isinstance(a, AddParent)]
        assert len(dropped) <= 1, dropped
        assert len(added) <= 1, added
        assert len(s.parents) == 3

    def test_a_move_replaces_the_old_parent_below_max_parents(self) -> None:
        """The scheduler stops counting the link to the old parent the moment it stops naming
        it: a download with fewer than max_parents must leave it too, not keep both."""
        s = new(max_parents=3)
        with_parents(s, 1, 2)
        out = with_parents(s, 1, 3)  # the scheduler moved us from p2 to p3
        assert DropParent("p2", MOVED) in out
        assert set(s.parents) == {"p1", "p3"}

    def test_a_download_below_max_parents_still_grows_by_newly_named_ones(self) -> None:
        s = new(max_parents=3)
        with_parents(s, 1)
        out = with_parents(s, 1, 2, 3)
        assert not [a for a in out if isinstance(a, DropParent)]
        assert set(s.parents) == {"p1", "p2", "p3"}


class TestVerifyThenWrite:
    """A piece is written only when it matches the lease holder's hash."""

    def test_a_matching_piece_is_written_and_the_blob_completes(self) -> None:
        s = new()
        with_parents(s, 1)
        s.apply(HashesKnown(HASHES))
        s.apply(ParentHas("p1", frozenset(range(PIECES))))
        out: list[Action] = []
        for i in range(PIECES):
            got = deliver(s, "p1", i)
            assert any(isinstance(a, WritePiece) and a.index == i for a in got)
            out += got
        assert out[-1] == Complete()
        assert not s.missing

    def test_a_piece_before_its_hash_waits_for_it(self) -> None:
        s = new()
        with_parents(s, 1)
        s.apply(ParentHas("p1", frozenset({0})))
        assert s.apply(PieceArrived("p1", 0, HASHES[0])) == []
        assert s.apply(HashesKnown({0: HASHES[0]})) == [WritePiece(0, "p1")]

    def test_no_hash_in_time_discards_it_and_asks_again(self) -> None:
        clock = Clock()
        s = new(clock, hash_wait=5)
        with_parents(s, 1)
        s.apply(ParentHas("p1", frozenset({0})))
        s.apply(PieceArrived("p1", 0, HASHES[0]))
        s.apply(BytesArrived(100))  # progress, so the stall rule stays out of this
        clock.now += 5.1
        out = s.apply(Tick())
        assert out[0] == DiscardPiece(0, "no hash for piece 0 after 5s", "p1")
        assert requests(out) == [("p1", 0)]

    def test_the_first_published_hash_stands(self) -> None:
        s = new()
        s.apply(HashesKnown({0: HASHES[0]}))
        s.apply(HashesKnown({0: "f" * 64}))
        assert s.hashes[0] == HASHES[0]

    def test_a_piece_already_held_is_discarded(self) -> None:
        s = new()
        with_parents(s, 1, 2)
        s.apply(HashesKnown(HASHES))
        deliver(s, "p1", 5)
        assert s.apply(PieceArrived("p2", 5, HASHES[5])) == [DiscardPiece(5, "already held", "p2")]


class TestLyingPeer:
    """A corrupt piece drops, bans and avoids its sender (test_corrupt_pieces_are_detected_and_avoided)."""

    def test_corrupt_piece(self) -> None:
        clock = Clock()
        s = new(clock)
        with_parents(s, 1, 2)
        s.apply(HashesKnown(HASHES))
        s.apply(ParentHas("p1", frozenset(range(PIECES))))
        s.apply(ParentHas("p2", frozenset(range(PIECES))))
        in_flight_at_p1 = sorted(i for i, p in s.in_flight.items() if p == "p1")
        out = s.apply(PieceArrived("p1", in_flight_at_p1[0], "0" * 64))
        assert out[0] == DiscardPiece(in_flight_at_p1[0], "corrupt piece from p1", "p1", corrupt=True)
        assert out[1] == DropParent("p1", f"piece {in_flight_at_p1[0]} is corrupt", clock.now + 600)
        assert "p1" not in s.parents
        assert s.unreported_failures == {"p1"}
        assert s.availability == [1] * PIECES  # only p2's pieces count now
        assert "p1" not in s.in_flight.values()
        assert with_parents(s, 1) == []  # banned for this blob

    def test_avoided_for_every_blob_until_it_expires(self) -> None:
        clock = Clock()
        avoided = {"p1": clock.now + 600}
        s = new(clock, avoided)
        assert with_parents(s, 1, 2) == [AddParent(parent(2))]
        clock.now += 601
        other = new(clock, avoided)
        assert with_parents(other, 1) == [AddParent(parent(1))]

    def test_a_corrupt_piece_from_a_dropped_parent_still_avoids_it(self) -> None:
        clock = Clock()
        s = new(clock)
        with_parents(s, 1)
        s.apply(ParentHas("p1", frozenset({0})))
        s.apply(PieceArrived("p1", 0, "0" * 64))  # before its hash
        s.apply(ParentLost("p1", "closed"))
        out = s.apply(HashesKnown(HASHES))
        assert DropParent("p1", "piece 0 is corrupt", clock.now + 600) in out


class TestFailingParents:
    """Failing and lost parents give their pieces back at once (test_fetcher_killed_mid_blob)."""

    def test_three_failures_in_a_row_drop_a_parent(self) -> None:
        s = new()
        with_parents(s, 1)
        s.apply(HashesKnown(HASHES))
        s.apply(ParentHas("p1", frozenset(range(PIECES))))
        i = next(iter(s.in_flight))
        s.apply(PieceFailed("p1", i, "timeout"))
        s.apply(PieceFailed("p1", i, "timeout"))
        deliver(s, "p1", next(iter(s.in_flight)))  # a success resets the count
        s.apply(PieceFailed("p1", i, "timeout"))
        s.apply(PieceFailed("p1", i, "timeout"))
        assert "p1" in s.parents
        out = s.apply(PieceFailed("p1", i, "reset"))
        assert DropParent("p1", "3 failed requests in a row: reset") in out

    def test_a_lost_parent_s_requests_go_to_another_at_once(self) -> None:
        s = new(lanes_per_parent=2)
        with_parents(s, 1, 2)
        s.apply(ParentHas("p1", frozenset({0, 1})))
        s.apply(ParentHas("p2", frozenset({0, 1})))
        assert set(s.in_flight) == {0, 1}
        taken_by_p1 = {i for i, p in s.in_flight.items() if p == "p1"}
        out = s.apply(ParentLost("p1", "connection reset"))
        assert out[0] == DropParent("p1", "connection reset")
        assert {i for _, i in requests(out)} == taken_by_p1
        assert set(s.in_flight.values()) == {"p2"}

    def test_a_rejected_piece_is_asked_of_another_parent(self) -> None:
        s = new(lanes_per_parent=1)
        with_parents(s, 1, 2)
        s.apply(ParentHas("p1", frozenset({3})))
        s.apply(ParentHas("p2", frozenset({3})))
        (holder,) = set(s.in_flight.values())
        other = "p2" if holder == "p1" else "p1"
        assert requests(s.apply(PieceRejected(holder, 3))) == [(other, 3)]
        assert not s.parents[holder].have[3]
        assert s.availability[3] == 1


class TestStalls:
    """No progress for stall_timeout sends the rest to the origin; progress of any kind resets it."""

    def test_stalled(self) -> None:
        clock = Clock()
        s = new(clock)
        with_parents(s, 1)
        clock.now += 25.0
        assert s.apply(Tick()) == []
        clock.now += 0.1
        assert s.apply(Tick()) == [AskFallback("stalled: no progress for 25s")]
        assert s.apply(Tick()) == []  # one ask at a time
        assert s.apply(FallbackAnswer(granted=True)) == [GiveUp("stalled: no progress for 25s", fallback_lease=True)]

    @pytest.mark.parametrize(
        "moving",
        [BytesArrived(1), HashesKnown({7: HASHES[7]}), PrefixAdvanced(100)],
        ids=["bytes arriving", "new hashes", "prefix"],
    )
    def test_slow_is_not_stalled(self, moving: BytesArrived | HashesKnown | PrefixAdvanced) -> None:
        clock = Clock()
        s = new(clock)
        with_parents(s, 1)
        clock.now += 20
        s.apply(moving)
        clock.now += 20
        assert s.apply(Tick()) == []
        clock.now += 5.1
        assert s.apply(Tick())[-1:] == [AskFallback("stalled: no progress for 25s")]

    def test_the_prefix_from_the_origin_prunes_and_completes(self) -> None:
        s = new()
        s.apply(SchedulerAnswer(fetcher=ME))
        assert s.apply(PrefixAdvanced(350)) == [AnnouncePieces((0, 1, 2))]
        assert s.missing == set(range(3, PIECES))
        assert s.apply(PrefixAdvanced(PIECES * PIECE)) == [AnnouncePieces((3, 4, 5, 6, 7)), Complete()]


class TestRefusedAsks:
    """A complete copy in the swarm makes the scheduler refuse every fallback ask; a node that
    cannot reach that copy (every peer refuses its certificate) must still reach the
    registry, as a direct pull would: after ``refused_asks`` refusals without progress."""

    def stall_and_be_refused(self, s: DownloadState, clock: Clock) -> list[Action]:
        clock.now += 25.1
        assert isinstance(s.apply(Tick())[-1], AskFallback)
        return s.apply(FallbackAnswer(granted=False))

    def test_three_refusals_with_every_hash_known_go_to_the_registry(self) -> None:
        clock = Clock()
        s = new(clock)
        s.apply(SchedulerAnswer(fetcher=None, parents=(parent(1),), hashes_known=PIECES, complete_named=True))
        for _ in range(2):
            assert not any(isinstance(a, GiveUp) for a in self.stall_and_be_refused(s, clock))
            s.apply(SchedulerAnswer(fetcher=None, parents=(parent(1),), hashes_known=PIECES, complete_named=True))
        out = self.stall_and_be_refused(s, clock)
        assert out[-1] == GiveUp("3 fallback asks refused without progress")
        assert not s.fallback_lease

    def test_while_the_holder_still_reads_the_registry_the_download_waits(self) -> None:
        clock = Clock()
        s = new(clock)
        s.apply(SchedulerAnswer(fetcher="origin-holder", parents=(parent(1),), hashes_known=3))
        for _ in range(5):
            assert not any(isinstance(a, GiveUp) for a in self.stall_and_be_refused(s, clock))
        assert not s.finished

    def test_refused_for_taken_leases_the_download_waits(self) -> None:
        """Every hash known but no complete copy named (the seed left): the scheduler refuses
        because the blob's fallback leases are taken, and those holders read the registry."""
        clock = Clock()
        s = new(clock)
        s.apply(SchedulerAnswer(fetcher=None, parents=(parent(1),), hashes_known=PIECES))
        for _ in range(5):
            assert not any(isinstance(a, GiveUp) for a in self.stall_and_be_refused(s, clock))
        assert not s.finished

    def test_progress_between_refusals_starts_the_count_again(self) -> None:
        clock = Clock()
        s = new(clock)
        s.apply(SchedulerAnswer(fetcher=None, parents=(parent(1),), hashes_known=PIECES, complete_named=True))
        self.stall_and_be_refused(s, clock)
        self.stall_and_be_refused(s, clock)
        s.apply(BytesArrived(100))
        s.apply(Tick())
        for _ in range(2):
            assert not any(isinstance(a, GiveUp) for a in self.stall_and_be_refused(s, clock))
        assert not s.finished


class TestFallbackLeases:
    """Overload without stampede: a stalled download goes to the origin only with one of the
    blob's few fallback leases; refused, it waits in the swarm for another stall_timeout."""

    def test_a_refused_ask_waits_a_full_stall_timeout_before_asking_again(self) -> None:
        clock = Clock()
        s = new(clock)
        with_parents(s, 1)
        clock.now += 25.1
        assert s.apply(Tick()) == [AskFallback("stalled: no progress for 25s")]
        clock.now += 3
        assert s.apply(FallbackAnswer(granted=False)) == [DropParent("p1", "told of no piece while we stalled")]
        clock.now += 24.9
        assert s.apply(Tick()) == []
        assert not s.finished
        clock.now += 0.2
        assert s.apply(Tick()) == [AskFallback("stalled: no progress for 25s")]

    def test_a_parent_silent_through_a_refused_stall_is_asked_afresh(self) -> None:
        """Seen in CI: a parent completed the blob while our interest was on its way, we never
        heard of a piece, and every fallback ask was refused (a complete copy exists): stuck
        for ever. Dropped without a ban, the parent comes back with the scheduler's next answer."""
        clock = Clock()
        s = new(clock)
        with_parents(s, 1, 2)
        s.apply(ParentHas("p2", frozenset({0})))
        clock.now += 25.1
        s.apply(Tick())
        dropped = s.apply(FallbackAnswer(granted=False))
        assert dropped == [DropParent("p1", "told of no piece while we stalled")]
        assert "p1" not in s.banned
        again = with_parents(s, 1, 2)
        assert AddParent(parent(1)) in again

    def test_the_copy_a_refusing_answer_names_is_kept(self) -> None:
        """The scheduler's answer to the ask names the complete copy it refuses for, and the
        refusal that follows it dropped every parent that had told of no piece: the copy
        added a moment before among them, so the refused download never asked it."""
        clock = Clock()
        s = new(clock)
        with_parents(s, 1)
        s.apply(ParentHas("p1", frozenset({0})))
        clock.now += 25.1
        assert s.apply(Tick()) == [AskFallback("stalled: no progress for 25s")]
        copy = ParentInfo("seed", "10.0.0.9:65001")
        answer = SchedulerAnswer(fetcher=None, parents=(copy, parent(1)), hashes_known=PIECES, complete_named=True)
        assert AddParent(copy) in s.apply(answer)
        dropped = s.apply(FallbackAnswer(granted=False))
        assert not any(isinstance(a, DropParent) for a in dropped)
        assert "seed" in s.parents

    def test_progress_while_asking_does_not_cancel_the_ask_but_a_late_answer_is_ignored_after(self) -> None:
        clock = Clock()
        s = new(clock)
        with_parents(s, 1)
        s.apply(HashesKnown(HASHES))
        clock.now += 25.1
        assert s.apply(Tick()) == [AskFallback("stalled: no progress for 25s")]
        s.apply(ParentHas("p1", frozenset(range(PIECES))))
        for i in range(PIECES):
            deliver(s, "p1", i)
        assert s.finished  # completed from the swarm while the ask was out
        assert s.apply(FallbackAnswer(granted=True)) == []

    def test_our_own_origin_fetch_never_asks(self) -> None:
        clock = Clock()
        s = new(clock)
        s.apply(SchedulerAnswer(fetcher=ME))
        clock.now += 100
        assert s.apply(Tick()) == []


class TestScheduler:
    """A dead scheduler ends only a download that also stopped moving (test_scheduler_killed_mid_rollout)."""

    def test_failures_with_progress_carry_on(self) -> None:
        clock = Clock()
        s = new(clock)
        with_parents(s, 1)
        s.apply(HashesKnown(HASHES))
        s.apply(ParentHas("p1", frozenset(range(PIECES))))
        for i in range(5):
            s.apply(SchedulerFailed())
            clock.now += 9
            assert not any(isinstance(a, GiveUp) for a in deliver(s, "p1", i))

    def test_failures_and_no_progress_give_up_before_the_stall_timeout(self) -> None:
        clock = Clock()
        s = new(clock)
        with_parents(s, 1)
        for _ in range(3):
            s.apply(SchedulerFailed())
        clock.now += 10.1
        assert s.apply(Tick()) == [AskFallback("scheduler: lost")]
        assert s.apply(FallbackAnswer(granted=True)) == [GiveUp("scheduler: lost", fallback_lease=True)]

    def test_an_answer_resets_the_failures(self) -> None:
        clock = Clock()
        s = new(clock)
        for _ in range(3):
            s.apply(SchedulerFailed())
        with_parents(s, 1)
        clock.now += 10.1
        assert s.apply(Tick()) == []


class TestSlowParents:
    """A request unanswered for piece_timeout is cancelled, goes back to the pool, and counts
    as a failed request: a parent that never answers is dropped (test_swarm: the killed
    fetcher, whose link can take far longer to be noticed dead)."""

    def test_an_unanswered_request_is_cancelled_and_asked_elsewhere(self) -> None:
        clock = Clock()
        s = new(clock, piece_timeout=10, parent_errors=2, lanes_per_parent=1)
        s.apply(SchedulerAnswer(fetcher="origin-holder", parents=(parent(1), parent(2))))
        s.apply(HashesKnown(HASHES))
        s.apply(ParentHas("p1", frozenset({0})))
        assert requests(s.apply(ParentHas("p2", frozenset({0, 1})))) == [("p2", 1)]
        clock.now += 9
        assert s.apply(Tick()) == []
        clock.now += 2
        out = s.apply(Tick())
        assert CancelRequest("p1", 0) in out
        assert CancelRequest("p2", 1) in out
        assert sorted(requests(out)) == [("p1", 0), ("p2", 1)]  # asked again (one error each so far)
        clock.now += 11
        out = s.apply(Tick())
        dropped = [a.peer_id for a in out if isinstance(a, DropParent)]
        assert sorted(dropped) == ["p1", "p2"]

    def test_an_answer_in_time_clears_the_clock(self) -> None:
        clock = Clock()
        s = new(clock, piece_timeout=10)
        with_parents(s, 1)
        s.apply(HashesKnown(HASHES))
        asked = requests(s.apply(ParentHas("p1", frozenset({0, 1}))))
        clock.now += 5
        for _, index in asked:
            deliver(s, "p1", index)
        clock.now += 6
        assert not [a for a in s.apply(Tick()) if isinstance(a, CancelRequest)]


class TestUnreachableParents:
    """A parent whose link could not be made is dropped but not banned or reported: under a
    rollout a busy node is slow to accept, and banning it for the blob starved children of
    parents (40-node fleet: 428 drops, all connect timeouts)."""

    def test_an_unreachable_parent_may_be_handed_out_again(self) -> None:
        s = new()
        with_parents(s, 1)
        out = s.apply(ParentLost("p1", "cannot connect: timed out", unreachable=True))
        assert [a for a in out if isinstance(a, DropParent)] == [DropParent("p1", "cannot connect: timed out")]
        assert "p1" not in s.banned
        assert not s.unreported_failures
        assert with_parents(s, 1) == [AddParent(parent(1))]

    def test_a_broken_link_bans_and_reports(self) -> None:
        s = new()
        with_parents(s, 1)
        s.apply(ParentLost("p1", "link closed"))
        assert "p1" in s.banned
        assert s.unreported_failures == {"p1"}
        assert with_parents(s, 1) == []


class TestMemoryBound:
    """Pieces that arrive before their hash wait in memory: at most ``max_unverified`` bytes of
    them (with requests in flight), then no new requests until hashes come."""

    def test_no_requests_while_too_much_waits_for_hashes(self) -> None:
        s = new(max_unverified=3 * PIECE, lanes_per_parent=2, max_parents=2)
        s.apply(SchedulerAnswer(fetcher="origin-holder", parents=(parent(1), parent(2))))
        asked = requests(s.apply(ParentHas("p1", frozenset(range(PIECES)))))
        asked += requests(s.apply(ParentHas("p2", frozenset(range(PIECES)))))
        assert len(asked) == 4
        for peer, index in asked[:3]:
            assert requests(s.apply(PieceArrived(peer, index, HASHES[index]))) == []
        assert len(s.awaiting_hash) == 3
        # the hashes come: the waiting pieces are written and asking resumes
        out = s.apply(HashesKnown(HASHES))
        assert len([a for a in out if isinstance(a, WritePiece)]) == 3
        assert requests(out)


class TestEndgame:
    """The last pieces: once everything missing is asked for, a free lane asks a second
    parent for the oldest request; the first copy wins and the other is cancelled."""

    def test_a_second_parent_is_asked_for_the_last_piece(self) -> None:
        clock = Clock()
        s = new(clock, lanes_per_parent=1, endgame_after=0.5)
        s.apply(SchedulerAnswer(fetcher="origin-holder", parents=(parent(1), parent(2))))
        s.apply(HashesKnown(HASHES))
        s.apply(PrefixAdvanced((PIECES - 2) * PIECE))  # two pieces left
        s.apply(ParentHas("p1", frozenset(range(PIECES))))
        s.apply(ParentHas("p2", frozenset(range(PIECES))))
        assert sorted(s.in_flight) == [PIECES - 2, PIECES - 1]
        deliver(s, s.in_flight[PIECES - 2], PIECES - 2)
        last = PIECES - 1
        slow = s.in_flight[last]
        fast = "p2" if slow == "p1" else "p1"
        assert s.apply(Tick()) == []  # too early for a second copy
        clock.now += 0.6
        assert requests(s.apply(Tick())) == [(fast, last)]
        assert requests(s.apply(Tick())) == []  # one extra copy at most
        out = deliver(s, fast, last)
        assert CancelRequest(slow, last) in out
        assert out[-1] == Complete()

    def test_a_failed_main_request_leaves_the_copy_in_charge(self) -> None:
        clock = Clock()
        s = new(clock, lanes_per_parent=1, endgame_after=0.0)
        s.apply(SchedulerAnswer(fetcher="origin-holder", parents=(parent(1), parent(2))))
        s.apply(HashesKnown(HASHES))
        s.apply(PrefixAdvanced((PIECES - 1) * PIECE))
        s.apply(ParentHas("p1", frozenset({PIECES - 1})))
        out = s.apply(ParentHas("p2", frozenset({PIECES - 1})))
        assert requests(out) == [("p2", PIECES - 1)]  # p1 was asked first, p2 at once in endgame
        s.apply(PieceFailed("p1", PIECES - 1, "broken"))
        assert s.in_flight == {PIECES - 1: "p2"}  # the copy took over (and p1 may be asked again)
        assert deliver(s, "p2", PIECES - 1)[-1] == Complete()


class TestRequestBound:
    """However many parents, at most max_requests pieces are asked for at once (memory)."""

    def test_many_parents_share_the_requests(self) -> None:
        s = new(max_parents=8, lanes_per_parent=2, max_requests=5)
        s.apply(SchedulerAnswer(fetcher="origin-holder", parents=tuple(parent(n) for n in range(1, 9))))
        asked: list[tuple[str, int]] = []
        for n in range(1, 9):
            asked += requests(s.apply(ParentHas(f"p{n}", frozenset(range(PIECES)))))
        assert len(asked) == 5
        assert len(s.in_flight) == 5


class TestSilentParentsOfAStall:
    """The refusal drops, to ask afresh, only parents that told of no piece through a whole
    stall: one named a moment before the ask had no time to."""

    class Ticking(Clock):
        """The agent's clock: every reading a little later than the one before."""

        def __call__(self) -> float:
            self.now += 1e-6
            return self.now

    def test_a_parent_named_by_the_answer_that_asked_is_kept(self) -> None:
        # a periodic answer that names a new parent is the event whose apply finds the stall:
        # its parent was added a microsecond before the ask, and the refusal dropped it before
        # its bitfield could come (a frozen clock, the simulator's, kept it)
        clock = self.Ticking()
        s = new(clock)
        with_parents(s, 1)
        s.apply(ParentHas("p1", frozenset({0})))
        clock.now += 25.1
        out = with_parents(s, 1, 2)
        assert out == [AddParent(parent(2)), AskFallback("stalled: no progress for 25s")]
        assert s.apply(FallbackAnswer(granted=False)) == []
        assert "p2" in s.parents

    def test_a_young_silent_parent_is_asked_afresh_by_the_next_refusal(self) -> None:
        clock = self.Ticking()
        s = new(clock)
        with_parents(s, 1)
        clock.now += 20.0
        with_parents(s, 1, 2)  # named mid-stall; both bitfields are lost
        clock.now += 5.1
        assert s.apply(Tick()) == [AskFallback("stalled: no progress for 25s")]
        assert s.apply(FallbackAnswer(granted=False)) == [DropParent("p1", "told of no piece while we stalled")]
        clock.now += 25.1
        assert s.apply(Tick()) == [AskFallback("stalled: no progress for 25s")]
        assert s.apply(FallbackAnswer(granted=False)) == [DropParent("p2", "told of no piece while we stalled")]
