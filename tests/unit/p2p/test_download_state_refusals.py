"""Review of the refused-parents rule (``unreachable_parents``): refusals that say nothing of
our own certificate must not send a download to the registry (each ask that is granted is
one more copy of the blob out of the registry)."""

from __future__ import annotations

from shoal.p2p.download_state import (
    Action,
    AddParent,
    AskFallback,
    DownloadRules,
    DownloadState,
    ParentHas,
    ParentInfo,
    ParentLost,
    SchedulerAnswer,
    StartOriginFetch,
    StopOriginFetch,
)

PIECE = 100
PIECES = 8
ME = "me"
HOLDER = "origin-holder"


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def parent(n: int) -> ParentInfo:
    return ParentInfo(f"p{n}", f"10.0.0.{n}:65001")


def new(clock: Clock) -> DownloadState:
    return DownloadState(
        peer_id=ME, size=PIECES * PIECE, piece_size=PIECE, rules=DownloadRules(), clock=clock, salt="me/sha256:x"
    )


def asks(actions: list[Action]) -> list[AskFallback]:
    return [a for a in actions if isinstance(a, AskFallback)]


def refused(peer_id: str) -> ParentLost:
    return ParentLost(peer_id, "TLS handshake failed: TLSV1_ALERT_UNKNOWN_CA", unreachable=True, refused=True)


def test_one_refusing_parent_named_again_counts_once() -> None:
    """A refused parent is dropped without a ban, so the scheduler (which never hears of it)
    names it again in its next answer, half a second later. One misconfigured node, or one
    that answers every ClientHello with an alert and needs no certificate to do so, is then
    "three parents in a row" within ~1.5 s: the download asks for a fallback lease while its
    working parent (here the holder's child p1, connected, with nothing yet) is merely quiet."""
    clock = Clock()
    s = new(clock)
    s.apply(SchedulerAnswer(fetcher=HOLDER, parents=(parent(1), parent(2))))
    out = s.apply(ParentHas("p1", frozenset()))  # p1 took our certificate: its bitfield came
    for _ in range(3):
        clock.now += 0.5
        out += s.apply(refused("p2"))
        again = s.apply(SchedulerAnswer(fetcher=HOLDER, parents=(parent(1), parent(2))))
        assert AddParent(parent(2)) in again  # the same node, dialled once more
        out += again
    assert asks(out) == []
    assert s.asking is None


def test_refusals_while_a_parent_holds_our_certificate_do_not_ask() -> None:
    """p1 accepted our certificate (its bitfield came over a live link): ours is not the
    certificate being refused, so three parents with bad certificates of their own are three
    bad parents, not the F6 node. The swarm (p1) still works and the stall timeout covers a
    real stall; asking now costs the registry a copy the rollout did not need."""
    clock = Clock()
    s = new(clock)
    s.apply(SchedulerAnswer(fetcher=HOLDER, parents=(parent(1), parent(2), parent(3), parent(4))))
    out = s.apply(ParentHas("p1", frozenset()))
    for n in (2, 3, 4):
        clock.now += 0.1
        out += s.apply(refused(f"p{n}"))
    assert "p1" in s.parents
    assert asks(out) == []


def test_refusals_counted_while_fetching_do_not_ask_after_the_lease_moves() -> None:
    """The fetcher never asks, yet its counter keeps counting; when the scheduler gives the
    lease to another node, the old count (refusals that cost nothing while it read the
    registry) sends it at once to ask for a fallback lease, i.e. to read the registry again
    beside the new holder."""
    clock = Clock()
    s = new(clock)
    out = s.apply(SchedulerAnswer(fetcher=ME, parents=(parent(1), parent(2), parent(3))))
    assert StartOriginFetch(0) in out
    for n in (1, 2, 3):
        assert asks(s.apply(refused(f"p{n}"))) == []
    clock.now += 1
    out = s.apply(SchedulerAnswer(fetcher="another", parents=(parent(4),)))
    assert StopOriginFetch("another") in out
    assert asks(out) == []
    assert s.asking is None
