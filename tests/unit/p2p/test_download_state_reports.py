"""The rules that moved from the download's owner into the pure state: reports to the
scheduler (when, and what they carry), announcements to children, the fallback ask and the
fallback lease, and who answers for the blob's hashes. A fake clock drives them."""

from __future__ import annotations

import hashlib

import pytest

from shoal.p2p.download_state import (
    ASK_RETRY_PAUSES,
    Action,
    AnnouncePieces,
    AskFallback,
    Complete,
    DownloadRules,
    DownloadState,
    DropParent,
    FallbackAnswer,
    GiveUp,
    HashesKnown,
    ParentHas,
    ParentInfo,
    ParentLost,
    PieceArrived,
    PiecesHashed,
    PieceWritten,
    PrefixAdvanced,
    ReportDue,
    SchedulerAnswer,
    SchedulerFailed,
    SendReport,
    Tick,
    WritePiece,
)
from shoal.p2p.download_state.rules import FETCHER_HEARTBEAT
from shoal.p2p.pieces import PieceGeometry

PIECE = 100
PIECES = 16
ME = "me"
HASHES = {i: hashlib.sha256(f"piece {i}".encode()).hexdigest() for i in range(PIECES)}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def new(clock: Clock, **rules: float) -> DownloadState:
    return DownloadState(
        peer_id=ME,
        geometry=PieceGeometry(PIECES * PIECE, PIECE),
        rules=DownloadRules(**rules),  # type: ignore[arg-type]  # ints and floats by name
        clock=clock,
    )


def parent(n: int) -> ParentInfo:
    return ParentInfo(f"p{n}", f"10.0.0.{n}:65001")


def reports(actions: list[Action]) -> list[SendReport]:
    return [a for a in actions if isinstance(a, SendReport)]


def due(s: DownloadState, clock: Clock) -> list[Action]:
    """Wake the state when it asked to be woken."""
    at = s.wake_at()
    assert at is not None
    clock.now = max(clock.now, at)
    return s.apply(ReportDue())


class TestReportTiming:
    """Heartbeat, short of parents, news at most every report_interval; one out at a time."""

    def test_a_quiet_download_with_enough_parents_reports_at_the_heartbeat(self) -> None:
        clock = Clock()
        s = new(clock, max_parents=1, heartbeat=5.0)
        s.apply(SchedulerAnswer("f", (parent(1),)))  # the join's answer counts as a report
        assert s.wake_at() == clock.now + 5.0
        clock.now += 4.9
        assert s.apply(ReportDue()) == []  # early: nothing
        clock.now += 0.1
        assert reports(s.apply(ReportDue())) == [SendReport(pieces=0, contiguous=0)]
        assert s.wake_at() is None  # one report out at a time
        s.apply(SchedulerAnswer("f", (parent(1),)))
        assert s.wake_at() == clock.now + 5.0

    def test_short_of_parents_it_reports_at_twice_the_interval(self) -> None:
        clock = Clock()
        s = new(clock, max_parents=3, report_interval=0.5)
        s.apply(SchedulerAnswer("f", (parent(1),)))
        assert s.wake_at() == clock.now + 1.0

    def test_the_fetcher_reports_with_nothing_new_at_its_own_heartbeat(self) -> None:
        """The scheduler takes a named fetcher silent for 5 s as dead: a live one whose next
        piece is slow reports before that."""
        clock = Clock()
        s = new(clock, max_parents=3, heartbeat=5.0)
        s.apply(SchedulerAnswer(ME))
        assert s.wake_at() == clock.now + FETCHER_HEARTBEAT
        s = new(clock, max_parents=3, heartbeat=1.0)
        s.apply(SchedulerAnswer(ME))
        assert s.wake_at() == clock.now + 1.0  # a shorter heartbeat still wins

    def test_ticks_never_send_reports(self) -> None:
        """Only ReportDue (and the fetcher's new hashes) send: a driver's clock ticks do not."""
        clock = Clock()
        s = new(clock, max_parents=1, stall_timeout=1000)
        s.apply(SchedulerAnswer("f", (parent(1),)))
        clock.now += 60
        assert reports(s.apply(Tick())) == []


class TestNews:
    """A dropped parent and another share of the blob make a report due a report_interval
    after the last one; what a failed report carried goes with the next."""

    def test_a_dropped_parent_is_reported_until_a_report_gets_through(self) -> None:
        clock = Clock()
        s = new(clock, max_parents=2, report_interval=0.5, heartbeat=5.0)
        s.apply(SchedulerAnswer("f", (parent(1), parent(2))))
        s.apply(ParentLost("p1", "link closed"))
        assert s.wake_at() == clock.now + 0.5
        (first,) = reports(due(s, clock))
        assert first.failed_parents == ("p1",)
        sent_at = clock.now
        assert s.apply(SchedulerFailed()) == []
        assert s.unreported_failures == {"p1"}
        assert s.wake_at() == sent_at + 0.5  # again, a report_interval later
        (second,) = reports(due(s, clock))
        assert second.failed_parents == ("p1",)
        s.apply(SchedulerAnswer("f", (parent(2),)))
        assert not s.unreported_failures
        (third,) = reports(due(s, clock))
        assert third.failed_parents == ()

    def test_another_eighth_of_the_blob_is_news(self) -> None:
        clock = Clock()
        s = new(clock, max_parents=1, report_interval=0.5, heartbeat=5.0)
        s.apply(SchedulerAnswer("f", (parent(1),)))
        s.apply(HashesKnown(HASHES))
        s.apply(ParentHas("p1", frozenset(range(PIECES))))
        start = clock.now
        for index in (0, 1):  # 16 pieces: an eighth is 2
            s.apply(PieceArrived("p1", index, HASHES[index]))
            assert s.wake_at() == start + 5.0
            s.apply(PieceWritten(index))
        assert s.wake_at() == start + 0.5
        (report,) = reports(due(s, clock))
        assert report.pieces == 2
        s.apply(SchedulerAnswer("f", (parent(1),)))
        assert s.wake_at() == clock.now + 5.0  # the share was heard


class TestHashPublication:
    """The fetcher publishes each new piece hash at once, each once; a final report carries
    the last ones when the download completes."""

    def test_new_hashes_go_at_once_and_only_once(self) -> None:
        clock = Clock()
        s = new(clock)
        s.apply(SchedulerAnswer(ME))
        (first,) = reports(s.apply(PiecesHashed({0: HASHES[0]})))
        assert first.hashes == {0: HASHES[0]}
        assert reports(s.apply(PiecesHashed({1: HASHES[1]}))) == []  # one out at a time
        s.apply(SchedulerAnswer(ME, hashes_known=1))
        assert s.wake_at() <= clock.now  # type: ignore[operator]  # piece 1 is due at once
        (second,) = reports(due(s, clock))
        assert second.hashes == {1: HASHES[1]}

    def test_hashes_a_restarted_scheduler_lost_go_again(self) -> None:
        """A scheduler that restarted (or another replica) answers the holder knowing fewer
        of its hashes than it took: every hash of ours goes again, or a child joining now
        could check none of the pieces before them."""
        clock = Clock()
        s = new(clock)
        s.apply(SchedulerAnswer(ME))
        s.apply(PiecesHashed({0: HASHES[0], 1: HASHES[1]}))
        s.apply(SchedulerAnswer(ME, hashes_known=2))  # those got through
        s.apply(PiecesHashed({2: HASHES[2]}))
        s.apply(SchedulerAnswer(ME, hashes_known=0))  # piece 2's report, to a fresh scheduler
        (again,) = reports(due(s, clock))
        assert again.hashes == {0: HASHES[0], 1: HASHES[1], 2: HASHES[2]}
        s.apply(SchedulerAnswer(ME, hashes_known=3))
        assert s.reports.unpublished() == {}  # and once it has them all, no more

    def test_hashes_of_a_failed_report_go_again(self) -> None:
        clock = Clock()
        s = new(clock, report_interval=0.5)
        s.apply(SchedulerAnswer(ME))
        s.apply(PiecesHashed({0: HASHES[0]}))
        s.apply(SchedulerFailed())
        assert s.wake_at() == clock.now + 0.5
        (again,) = reports(due(s, clock))
        assert again.hashes == {0: HASHES[0]}

    def test_a_completed_fetcher_sends_its_last_hashes_in_a_final_report(self) -> None:
        clock = Clock()
        s = new(clock)
        s.apply(SchedulerAnswer(ME))
        s.apply(PiecesHashed({i: HASHES[i] for i in range(PIECES - 1)}))
        s.apply(SchedulerAnswer(ME, hashes_known=PIECES - 1))  # those got through
        s.apply(PiecesHashed({PIECES - 1: HASHES[PIECES - 1]}))  # the last one is out...
        out = s.apply(PrefixAdvanced(PIECES * PIECE))  # ...and the blob is complete
        assert isinstance(out[0], AnnouncePieces)
        assert out[1:] == [
            SendReport(pieces=PIECES, contiguous=PIECES * PIECE, hashes={PIECES - 1: HASHES[PIECES - 1]}, final=True),
            Complete(),
        ]

    def test_a_child_completes_without_a_final_report(self) -> None:
        clock = Clock()
        s = new(clock)
        s.apply(SchedulerAnswer("f"))
        assert reports(s.apply(PrefixAdvanced(PIECES * PIECE))) == []
        assert s.finished

    def test_holders_that_published_hashes_answer_for_the_blob(self) -> None:
        s = new(Clock())
        s.apply(SchedulerAnswer("f1"))
        assert s.suppliers == set()
        s.apply(SchedulerAnswer("f1", hashes_known=3))
        s.apply(SchedulerAnswer("f2", hashes_known=5))
        assert s.suppliers == {"f1", "f2"}


class TestAnnouncing:
    """Each verified piece is announced to children once, whether it was written from a
    parent or passed by the verified prefix."""

    def test_written_pieces_and_the_prefix_are_announced_once(self) -> None:
        clock = Clock()
        s = new(clock)
        s.apply(SchedulerAnswer("f", (parent(1),)))
        s.apply(HashesKnown(HASHES))
        s.apply(ParentHas("p1", frozenset({1})))
        assert s.apply(PieceArrived("p1", 1, HASHES[1])) == [WritePiece(1, "p1")]
        assert AnnouncePieces((1,)) in s.apply(PieceWritten(1))
        announced = [a for a in s.apply(PrefixAdvanced(3 * PIECE)) if isinstance(a, AnnouncePieces)]
        assert announced == [AnnouncePieces((0, 2))]
        assert not [a for a in s.apply(PrefixAdvanced(3 * PIECE)) if isinstance(a, AnnouncePieces)]
        assert s.announced == {0, 1, 2}


class TestFallbackAsk:
    """A stuck download asks by a report with wants_fallback, at once; an ask that cannot
    get through is tried again after each of ASK_RETRY_PAUSES, then taken as a yes without
    a lease (nobody is left to coordinate with)."""

    def stuck(self, clock: Clock) -> DownloadState:
        s = new(clock, stall_timeout=25, max_parents=1)
        s.apply(SchedulerAnswer("f", (parent(1),)))
        clock.now += 25.1
        assert s.apply(Tick()) == [AskFallback("stalled: no progress for 25s")]
        at = s.wake_at()
        assert at is not None
        assert at <= clock.now  # the ask is due at once
        return s

    def test_the_ask_goes_as_a_report_and_a_grant_is_a_lease(self) -> None:
        clock = Clock()
        s = self.stuck(clock)
        (ask,) = reports(s.apply(ReportDue()))
        assert ask.wants_fallback
        s.apply(SchedulerAnswer("f"))
        assert s.apply(FallbackAnswer(granted=True)) == [GiveUp("stalled: no progress for 25s", fallback_lease=True)]
        assert s.fallback_lease

    def test_an_unreachable_scheduler_is_asked_again_then_taken_as_a_yes(self) -> None:
        clock = Clock()
        s = self.stuck(clock)
        for pause in ASK_RETRY_PAUSES:
            assert reports(s.apply(ReportDue()))[0].wants_fallback
            assert s.apply(SchedulerFailed()) == []
            assert s.wake_at() == pytest.approx(clock.now + pause)
            clock.now += pause
        assert reports(s.apply(ReportDue()))[0].wants_fallback
        assert s.apply(SchedulerFailed()) == [GiveUp("stalled: no progress for 25s")]
        assert not s.fallback_lease
        assert s.wake_at() is None  # no lease to hold

    def test_a_refused_ask_is_not_repeated_until_the_next_stall(self) -> None:
        clock = Clock()
        s = self.stuck(clock)
        s.apply(ReportDue())
        s.apply(SchedulerAnswer("f"))
        assert s.apply(FallbackAnswer(granted=False)) == [DropParent("p1", "told of no piece while we stalled")]
        (regular,) = reports(due(s, clock))
        assert not regular.wants_fallback


class TestFallbackLease:
    """After a granted ask the download is over, but its state keeps asking for a heartbeat
    report (wants_fallback, with the prefix the origin fetch reached) to hold the lease."""

    def test_the_lease_is_held_by_heartbeats(self) -> None:
        clock = Clock()
        s = new(clock, stall_timeout=25, max_parents=1, heartbeat=5.0)
        s.apply(SchedulerAnswer("f", (parent(1),)))
        clock.now += 25.1
        s.apply(Tick())
        s.apply(ReportDue())
        s.apply(SchedulerAnswer("f"))
        s.apply(FallbackAnswer(granted=True))
        assert s.finished
        assert s.wake_at() == clock.now + 5.0
        s.apply(PrefixAdvanced(7 * PIECE))
        (held,) = reports(due(s, clock))
        assert (held.wants_fallback, held.contiguous) == (True, 7 * PIECE)
        assert s.wake_at() is None
        s.apply(SchedulerFailed())
        assert reports(due(s, clock))  # again after a failure
        s.apply(SchedulerAnswer("f"))
        assert s.wake_at() == clock.now + 5.0
        assert [a for a in s.apply(ParentLost("p1", "x")) if isinstance(a, DropParent)] == []  # over
