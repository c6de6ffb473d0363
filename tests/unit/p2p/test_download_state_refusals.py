"""Parents that refuse a node's certificate (issue 16, F6), from a review: refusals must not
send a download to the registry early (each fallback lease granted is one more copy out of
the registry, and one node can refuse at no cost), and a node every peer refuses must still
reach the registry, as a direct pull would."""

from __future__ import annotations

import random

from shoal.p2p.download_state import (
    Action,
    AddParent,
    AskFallback,
    DownloadRules,
    DownloadState,
    Event,
    FallbackAnswer,
    GiveUp,
    ParentHas,
    ParentLost,
    ReportDue,
    SchedulerAnswer,
    SendReport,
    StartOriginFetch,
    StopOriginFetch,
)
from shoal.p2p.download_state.scheduler_messages import answer_event, report_message
from shoal.p2p.pieces import PieceGeometry
from shoal.p2p.protocol import JoinRequest, Report
from shoal.scheduler.config import SchedulerConfig
from shoal.scheduler.state import SchedulerState

from .test_download_state import Clock, parent

PIECE = 100
PIECES = 8
ME = "me"
HOLDER = "origin-holder"


def new(clock: Clock) -> DownloadState:
    return DownloadState(
        peer_id=ME, size=PIECES * PIECE, piece_size=PIECE, rules=DownloadRules(), clock=clock, salt="me/sha256:x"
    )


def asks(actions: list[Action]) -> list[AskFallback]:
    return [a for a in actions if isinstance(a, AskFallback)]


def refused(peer_id: str) -> ParentLost:
    return ParentLost(peer_id, "TLS handshake failed: TLSV1_ALERT_UNKNOWN_CA", unreachable=True)


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


def test_a_node_every_peer_refuses_reaches_the_registry_when_the_blob_is_seeded() -> None:
    """F6 end to end, with the real scheduler: the node's certificate is refused by every
    peer, and the blob is already seeded (the usual case outside a rollout: a pod scheduled
    onto this node pulls an image the fleet holds). The scheduler refuses every fallback lease
    ("a complete copy is in the swarm ... no registry needed"), since nothing in the reports
    says this node cannot reach that copy (refused parents are dropped without being
    reported). The download never reached the registry, where a direct pull would have
    succeeded; now, after ``refused_asks`` refused asks with every hash known, it goes."""
    clock = Clock()
    clock.now = 0.0
    mib = 1 << 20
    size = 10 * mib
    digest = "sha256:" + "a" * 64
    sched = SchedulerState(SchedulerConfig(), rng=random.Random(7))
    sched.join(digest, JoinRequest("seed", "seed:1", size, mib), 0.0)
    every = {i: f"{i:064x}" for i in range(10)}
    seed_report = Report("seed", "seed:1", 10, size, complete=True, hashes=every, size=size, piece_size=mib)
    sched.report(digest, seed_report, 0.1)
    clock.now = 1.0
    s = DownloadState(peer_id=ME, size=size, piece_size=mib, rules=DownloadRules(), clock=clock, salt="x")
    geometry = PieceGeometry(size, mib)
    pending: list[Event] = [answer_event(sched.join(digest, JoinRequest(ME, "me:1", size, mib), clock.now))]
    asked = 0
    while clock.now < 120.0:
        pending.append(ReportDue())
        while pending:
            for action in s.apply(pending.pop(0)):
                if isinstance(action, GiveUp):
                    return  # to the registry: what a direct pull does
                if isinstance(action, AskFallback):
                    asked += 1
                if isinstance(action, AddParent):  # every peer refuses our certificate
                    pending.append(refused(action.parent.peer_id))
                if isinstance(action, SendReport):
                    view = sched.report(digest, report_message(action, ME, "me:1", geometry), clock.now)
                    pending.append(answer_event(view))
                    if action.wants_fallback:
                        pending.append(FallbackAnswer(granted=view.fallback))
        clock.now += 0.25
        if clock.now % 5 == 0:
            sched.report(digest, seed_report, clock.now)  # the seed's heartbeat
    raise AssertionError(f"no registry after {clock.now:.0f}s and {asked} refused fallback asks")


def test_one_node_answering_with_alerts_costs_the_registry_no_copy_at_a_rollout_start() -> None:
    """The first test with the real scheduler: the holder is reading the registry (no piece
    yet, 1 s heartbeats), one member answers every ClientHello with a TLS alert (7 bytes, no
    certificate needed), and a child pulls. The scheduler names that member again in every
    answer; 1.7 s in, the child asks and is granted one of the blob's fallback leases: a
    second copy from the registry in what should be a 1.00x rollout."""
    clock = Clock()
    clock.now = 0.0
    mib = 1 << 20
    size = 10 * mib
    digest = "sha256:" + "b" * 64
    sched = SchedulerState(SchedulerConfig(), rng=random.Random(7))
    assert sched.join(digest, JoinRequest("holder", "holder:1", size, mib), 0.0).role == "fetcher"
    sched.join(digest, JoinRequest("bad", "bad:1", size, mib), 0.05)
    clock.now = 0.1
    s = DownloadState(peer_id=ME, size=size, piece_size=mib, rules=DownloadRules(), clock=clock, salt="x")
    geometry = PieceGeometry(size, mib)
    pending: list[Event] = [answer_event(sched.join(digest, JoinRequest(ME, "me:1", size, mib), clock.now))]
    ticks = 0
    while ticks < 100:  # ten seconds
        pending.append(ReportDue())
        while pending:
            for action in s.apply(pending.pop(0)):
                assert not isinstance(action, GiveUp), f"{clock.now:.1f}s: {action}"
                if isinstance(action, AddParent):
                    pid = action.parent.peer_id
                    pending.append(refused(pid) if pid == "bad" else ParentHas(pid, frozenset()))
                if isinstance(action, SendReport):
                    view = sched.report(digest, report_message(action, ME, "me:1", geometry), clock.now)
                    pending.append(answer_event(view))
                    if action.wants_fallback:
                        pending.append(FallbackAnswer(granted=view.fallback))
        ticks += 1
        clock.now = 0.1 + ticks / 10
        if ticks % 10 == 0:  # the holder's heartbeat: still on its first piece
            sched.report(digest, Report("holder", "holder:1", 0, 0, size=size, piece_size=mib), clock.now)
    assert sched.fallbacks_granted == 0
