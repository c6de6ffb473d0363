"""A certificate refused in the middle of a pull (issue 16, F6; from a second review): the
pull still ends at the registry, as a direct pull would, with the real scheduler."""

from __future__ import annotations

import random
from dataclasses import replace

from shoal.p2p.download_state import (
    AddParent,
    AskFallback,
    DownloadRules,
    DownloadState,
    Event,
    FallbackAnswer,
    GiveUp,
    ParentHas,
    ParentInfo,
    ParentLost,
    ReportDue,
    SchedulerAnswer,
    SendReport,
)
from shoal.p2p.download_state.scheduler_messages import answer_event, report_message
from shoal.p2p.pieces import PieceGeometry
from shoal.p2p.protocol import JoinRequest, Report
from shoal.scheduler.config import SchedulerConfig
from shoal.scheduler.state import SchedulerState

MIB = 1 << 20
PIECES = 10
SIZE = PIECES * MIB
EVERY = {i: f"{i:064x}" for i in range(PIECES)}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def refused(peer_id: str) -> ParentLost:
    return ParentLost(peer_id, "TLS handshake failed: CERTIFICATE_VERIFY_FAILED", unreachable=True)


def seeded(digest: str, *seeds: str) -> SchedulerState:
    """A scheduler whose task for ``digest`` has ``seeds`` complete, with every piece hash."""
    sched = SchedulerState(SchedulerConfig(), rng=random.Random(7))
    for seed in seeds:
        sched.join(digest, JoinRequest(seed, f"{seed}:1", SIZE, MIB), 0.0)
        report = Report(seed, f"{seed}:1", PIECES, SIZE, complete=True, hashes=EVERY, size=SIZE, piece_size=MIB)
        sched.report(digest, report, 0.1)
    return sched


def test_a_certificate_refused_after_a_parent_took_it_still_reaches_the_registry() -> None:
    """F6 arriving mid-pull: the node's certificate expires (its renewal failed) or the
    fleet's CA bundle rotates past it while a layer downloads. Its link to p1, made before,
    keeps working and brings a bitfield; then p1 goes away (it restarted, the link idled
    out). From then on every peer refuses the certificate, p1 included. The
    scheduler refuses every stall ask beside the seed's complete copy; the pull must still
    end at the registry, as a direct pull would."""
    clock = Clock()
    digest = "sha256:" + "e" * 64
    sched = seeded(digest, "seed", "p1")
    seed_beat = Report("seed", "seed:1", PIECES, SIZE, complete=True, size=SIZE, piece_size=MIB)
    geometry = PieceGeometry(SIZE, MIB)
    clock.now = 1.0
    s = DownloadState(peer_id="me", geometry=geometry, rules=DownloadRules(), clock=clock, salt="x")
    s.apply(answer_event(sched.join(digest, JoinRequest("me", "me:1", SIZE, MIB), clock.now)))
    s.apply(SchedulerAnswer(fetcher="seed", parents=(ParentInfo("p1", "p1:1"),), hashes_known=PIECES))
    s.apply(ParentHas("p1", frozenset(range(PIECES))))  # the link from before: it took our certificate
    clock.now = 2.0
    s.apply(ParentLost("p1", "link closed"))  # p1 restarted: what the hub says of a link lost
    pending: list[Event] = []
    asked = 0
    while clock.now < 600.0:
        pending.append(ReportDue())
        while pending:
            for action in s.apply(pending.pop(0)):
                if isinstance(action, GiveUp):
                    return  # to the registry: what a direct pull does
                if isinstance(action, AskFallback):
                    asked += 1
                if isinstance(action, AddParent):  # from now on every peer refuses our certificate
                    pending.append(refused(action.parent.peer_id))
                if isinstance(action, SendReport):
                    view = sched.report(digest, report_message(action, "me", "me:1", geometry), clock.now)
                    pending.append(answer_event(view))
                    if action.wants_fallback:
                        pending.append(FallbackAnswer(granted=view.fallback))
        clock.now += 0.25
        if clock.now % 5 == 0:
            sched.report(digest, seed_beat, clock.now)
            sched.report(digest, replace(seed_beat, peer_id="p1", address="p1:1"), clock.now)
    raise AssertionError(f"no registry after {clock.now:.0f}s and {asked} refused fallback asks")
