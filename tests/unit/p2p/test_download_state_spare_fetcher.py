"""A node that fetches one blob from the origin asks its other blobs' fetchers last."""

from __future__ import annotations

import hashlib

from shoal.p2p.download_state import (
    SPARE_FETCHER_FOR,
    Action,
    DownloadRules,
    DownloadState,
    HashesKnown,
    NodeFetching,
    ParentHas,
    ParentInfo,
    PieceArrived,
    PieceRejected,
    RequestPiece,
    SchedulerAnswer,
    Tick,
)

PIECE = 100
PIECES = 8
HASHES = {i: hashlib.sha256(f"piece {i}".encode()).hexdigest() for i in range(PIECES)}
FETCHER = "fetcher"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def info(peer: str) -> ParentInfo:
    return ParentInfo(peer, f"{peer}:65001")


def child(clock: Clock) -> DownloadState:
    """A download whose parents are its blob's fetcher (first) and one relay."""
    s = DownloadState(peer_id="me", size=PIECES * PIECE, piece_size=PIECE, rules=DownloadRules(), clock=clock)
    s.apply(SchedulerAnswer(fetcher=FETCHER, parents=(info(FETCHER), info("relay"))))
    return s


def asked(actions: list[Action]) -> list[tuple[str, int]]:
    return [(a.peer_id, a.index) for a in actions if isinstance(a, RequestPiece)]


def relayed(s: DownloadState, clock: Clock, index: int = 7) -> None:
    """A piece came from the relay just now: pieces come from elsewhere."""
    s.apply(HashesKnown({index: HASHES[index]}))
    assert asked(s.apply(ParentHas("relay", frozenset({index})))) == [("relay", index)]
    s.apply(PieceArrived("relay", index, HASHES[index]))


def test_a_download_beside_no_fetch_asks_the_fetcher() -> None:
    s = child(Clock())
    assert asked(s.apply(ParentHas(FETCHER, frozenset({0})))) == [(FETCHER, 0)]


def test_beside_a_fetch_the_fetcher_is_left_while_the_relay_serves() -> None:
    clock = Clock()
    s = child(clock)
    s.apply(NodeFetching(True))
    relayed(s, clock)
    s.apply(ParentHas(FETCHER, frozenset({0, 1, 2})))
    assert asked(s.apply(ParentHas("relay", frozenset({0})))) == [("relay", 0)]
    # a new piece of the fetcher's is not asked of it while pieces come from the relay
    assert asked(s.apply(ParentHas(FETCHER, frozenset({3})))) == []
    s.apply(HashesKnown({0: HASHES[0]}))
    clock.now += 0.5
    assert asked(s.apply(PieceArrived("relay", 0, HASHES[0]))) == []


def test_the_fetcher_is_the_last_resort_when_nothing_comes_from_elsewhere() -> None:
    clock = Clock()
    s = child(clock)
    s.apply(NodeFetching(True))
    relayed(s, clock)
    assert asked(s.apply(ParentHas(FETCHER, frozenset({0, 1})))) == []
    clock.now += SPARE_FETCHER_FOR
    assert [peer for peer, _ in asked(s.apply(Tick()))] == [FETCHER]


def test_the_node_s_fetch_ending_frees_the_fetcher_at_once() -> None:
    clock = Clock()
    s = child(clock)
    s.apply(NodeFetching(True))
    relayed(s, clock)
    assert asked(s.apply(ParentHas(FETCHER, frozenset({0})))) == []
    assert asked(s.apply(NodeFetching(False))) == [(FETCHER, 0)]


def test_once_every_hash_is_published_the_fetcher_is_asked_again() -> None:
    clock = Clock()
    s = child(clock)
    s.apply(NodeFetching(True))
    relayed(s, clock)
    assert asked(s.apply(ParentHas(FETCHER, frozenset({0})))) == []
    # the fetch is done: every hash published; the fetcher is a seed like any other
    assert asked(s.apply(HashesKnown(HASHES))) == [(FETCHER, 0)]


def test_a_moved_lease_spares_the_new_holder_and_frees_the_old() -> None:
    clock = Clock()
    s = child(clock)
    s.apply(NodeFetching(True))
    relayed(s, clock)
    assert asked(s.apply(ParentHas(FETCHER, frozenset({0})))) == []
    assert asked(s.apply(SchedulerAnswer(fetcher="relay", parents=(info(FETCHER), info("relay"))))) == [(FETCHER, 0)]


def test_endgame_does_not_ask_the_spared_fetcher_for_a_second_copy() -> None:
    clock = Clock()
    s = DownloadState(peer_id="me", size=2 * PIECE, piece_size=PIECE, rules=DownloadRules(), clock=clock)
    s.apply(SchedulerAnswer(fetcher=FETCHER, parents=(info(FETCHER), info("relay"))))
    s.apply(NodeFetching(True))
    relayed(s, clock, index=1)
    assert asked(s.apply(ParentHas("relay", frozenset({0})))) == [("relay", 0)]
    clock.now += 1.0  # past endgame_after: a free lane would ask for a second copy
    assert asked(s.apply(ParentHas(FETCHER, frozenset({0})))) == []
    # the relay refuses after all: with nothing from it for SPARE_FETCHER_FOR, the fetcher
    # is asked
    s.apply(PieceRejected("relay", 0))
    clock.now += SPARE_FETCHER_FOR
    assert asked(s.apply(Tick())) == [(FETCHER, 0)]


def test_a_fetcher_that_serves_as_last_resort_is_not_spared_again_by_its_own_pieces() -> None:
    """Once nothing came from elsewhere, a piece from the fetcher itself must not count as
    "pieces come from elsewhere": else each burst waits another SPARE_FETCHER_FOR."""
    clock = Clock()
    s = child(clock)
    s.apply(NodeFetching(True))
    relayed(s, clock)
    s.apply(HashesKnown({i: HASHES[i] for i in range(PIECES - 2)}))  # the fetch is on
    s.apply(ParentHas(FETCHER, frozenset(range(4))))
    clock.now += SPARE_FETCHER_FOR
    first = asked(s.apply(Tick()))
    assert [peer for peer, _ in first] == [FETCHER]
    # its piece comes: the fetcher is still the only source, so the next is asked at once
    index = first[0][1]
    assert [peer for peer, _ in asked(s.apply(PieceArrived(FETCHER, index, HASHES[index])))] == [FETCHER]


def test_a_request_hung_at_another_parent_does_not_keep_the_fetcher_spared() -> None:
    """A relay that took a request and sends nothing would keep the fetcher spared until the
    piece times out (``piece_timeout``, 30 s): only pieces that come count as "elsewhere"."""
    clock = Clock()
    s = child(clock)
    s.apply(NodeFetching(True))
    relayed(s, clock)
    assert asked(s.apply(ParentHas("relay", frozenset({0})))) == [("relay", 0)]
    assert asked(s.apply(ParentHas(FETCHER, frozenset({1})))) == []
    clock.now += SPARE_FETCHER_FOR  # the relay sent nothing since
    assert asked(s.apply(Tick())) == [(FETCHER, 1)]


def test_a_download_whose_only_parent_is_the_fetcher_asks_it_at_once() -> None:
    """A two-node fleet: each node fetches one layer from the origin and is the other's only
    parent for it. Nothing came from elsewhere: sparing the fetcher would only idle the
    download for SPARE_FETCHER_FOR (simulated at N=3, 3 layers: 11.7 s slowest against
    9.2 s)."""
    s = DownloadState(peer_id="me", size=PIECES * PIECE, piece_size=PIECE, rules=DownloadRules(), clock=Clock())
    s.apply(SchedulerAnswer(fetcher=FETCHER, parents=(info(FETCHER),)))
    s.apply(NodeFetching(True))
    assert asked(s.apply(ParentHas(FETCHER, frozenset({0})))) == [(FETCHER, 0)]
