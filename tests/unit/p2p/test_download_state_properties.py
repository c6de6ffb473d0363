"""Any sequence of events keeps the download state's books consistent (hypothesis): every
request is on its parent's lanes and nowhere else, an endgame copy never doubles its own
main request, and no parent is asked for more than its lanes."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.p2p.download_state import (
    BytesArrived,
    DownloadRules,
    DownloadState,
    Event,
    HashesKnown,
    ParentHas,
    ParentInfo,
    ParentLost,
    PieceArrived,
    PieceFailed,
    PieceRejected,
    PieceWritten,
    PrefixAdvanced,
    SchedulerAnswer,
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
