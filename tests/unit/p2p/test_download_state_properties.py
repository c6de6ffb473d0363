"""Any sequence of events keeps the download state's books consistent (hypothesis): every
request is on its parent's lanes and nowhere else, an endgame copy never doubles its own
main request, and no parent is asked for more than its lanes; reports, announcements and
hash publication keep their promises."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.p2p.download_state import (
    AnnouncePieces,
    BytesArrived,
    Complete,
    DownloadRules,
    DownloadState,
    Event,
    FallbackAnswer,
    HashesKnown,
    ParentHas,
    ParentInfo,
    ParentLost,
    PieceArrived,
    PieceFailed,
    PieceRejected,
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

PIECES = 6
PIECE = 10
PEERS = ("p1", "p2", "p3")
HASHES = {i: hashlib.sha256(f"piece {i}".encode()).hexdigest() for i in range(PIECES)}


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


peer = st.sampled_from(PEERS)
index = st.integers(0, PIECES - 1)
events = st.one_of(
    st.builds(
        SchedulerAnswer,
        fetcher=st.sampled_from(["other", None]),
        parents=st.lists(peer, max_size=3).map(lambda ps: tuple(ParentInfo(p, f"{p}:1") for p in ps)),
    ),
    st.builds(ParentHas, peer, st.frozensets(index, max_size=PIECES)),
    st.just(HashesKnown(HASHES)),
    st.builds(PieceArrived, peer, index, st.sampled_from([HASHES[0], "bad"]).map(lambda h: h)),
    st.builds(lambda p, i: PieceArrived(p, i, HASHES[i]), peer, index),
    st.builds(PieceFailed, peer, index, st.just("x")),
    st.builds(PieceRejected, peer, index),
    st.builds(ParentLost, peer, st.just("gone"), st.booleans()),
    st.builds(BytesArrived, st.integers(1, 100)),
    st.builds(PrefixAdvanced, st.integers(0, PIECES * PIECE)),
    st.just(Tick()),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(events, st.floats(0, 3)), max_size=60))
def test_the_books_stay_consistent(steps: list[tuple[Event, float]]) -> None:
    clock = Clock()
    rules = DownloadRules(lanes_per_parent=2, max_requests=4, endgame_after=0.2, piece_timeout=5, stall_timeout=1000)
    s = DownloadState(peer_id="me", size=PIECES * PIECE, piece_size=PIECE, rules=rules, clock=clock)
    for event, dt in steps:
        clock.now += dt
        for action in s.apply(event):
            if isinstance(action, WritePiece):
                s.apply(PieceWritten(action.index))
        for i, holder in s.in_flight.items():
            assert i in s.asked_at
            assert s.extra.get(i) != holder
        assert s.extra.keys() <= s.in_flight.keys()
        for pid, p in s.parents.items():
            mine = {i for i, h in s.in_flight.items() if h == pid} | {i for i, h in s.extra.items() if h == pid}
            assert p.in_flight == mine, pid
            assert len(p.in_flight) <= rules.lanes_per_parent
        assert len(s.in_flight) + len(s.extra) <= rules.max_requests
        asked = set(s.in_flight.values()) | set(s.extra.values())
        assert asked <= s.parents.keys()


# -- reports, announcements, hash publication, the fallback lease ------------------------

OWN = {i: hashlib.sha256(f"own {i}".encode()).hexdigest() for i in range(PIECES)}
report_events = st.one_of(
    events,
    st.just(ReportDue()),
    st.just(SchedulerFailed()),
    st.builds(SchedulerAnswer, fetcher=st.sampled_from(["me", "other", None]), hashes_known=st.integers(0, 2)),
    st.builds(FallbackAnswer, st.booleans()),
    st.builds(PiecesHashed, st.dictionaries(index, st.sampled_from(list(OWN.values())), max_size=3)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(report_events, st.floats(0, 8)), max_size=80))
def test_reports_and_announcements_keep_their_promises(steps: list[tuple[Event, float]]) -> None:
    """Whatever happens: one report out at a time; a hash the scheduler took is never sent
    again while it holds it; a report names only parents dropped for cause; each piece is
    announced once and only once held; after the end nothing happens but the fallback
    lease's heartbeats."""
    clock = Clock()
    rules = DownloadRules(max_requests=4, stall_timeout=20, scheduler_lost_grace=5, heartbeat=5, report_interval=0.5)
    s = DownloadState(peer_id="me", size=PIECES * PIECE, piece_size=PIECE, rules=rules, clock=clock)
    out: SendReport | None = None
    published: set[int] = set()
    announced: list[int] = []
    for event, dt in steps:
        clock.now += dt
        was_finished = s.finished
        actions = s.apply(event)
        if isinstance(event, SchedulerAnswer | SchedulerFailed) and out is not None:
            if isinstance(event, SchedulerAnswer):
                published |= out.hashes.keys()
            out = None
        if isinstance(event, SchedulerAnswer) and event.fetcher == "me" and event.hashes_known < len(published):
            published.clear()  # a scheduler that lost what it took from its holder gets it again
        for action in actions:
            if isinstance(action, WritePiece):
                actions += s.apply(PieceWritten(action.index))
        for action in actions:
            if was_finished:
                # after the end, only a fallback lease's heartbeats
                assert s.fallback_lease
                assert isinstance(action, SendReport)
                assert action.wants_fallback
            if isinstance(action, SendReport):
                assert not published & action.hashes.keys()  # each hash once
                assert set(action.failed_parents) <= s.banned
                assert action.hashes.keys() <= OWN.keys()
                if action.final:
                    assert any(isinstance(a, Complete) for a in actions)
                else:
                    assert out is None  # one report out at a time
                    out = action
            if isinstance(action, AnnouncePieces):
                announced += action.indices
                assert not set(action.indices) & s.missing  # only pieces we hold
        assert len(announced) == len(set(announced))  # each piece once
        if out is not None:
            assert s.wake_at() is None  # nothing is due while a report is out
        if s.finished and not s.fallback_lease:
            assert s.wake_at() is None
