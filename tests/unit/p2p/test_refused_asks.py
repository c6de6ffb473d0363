"""``refused_asks`` (issue 16, F6; from two reviews), with the real scheduler: a download
reads the registry without a lease after three fallback asks refused beside a complete
copy it cannot reach. A certificate refused in the middle of a pull still ends there; but
refusals that say something else (the blob's fallback leases taken, the holder still
reading) must not send a node to the registry: each such node is one more copy the leases
were there to spare."""

from __future__ import annotations

import random
from dataclasses import replace

from shoal.p2p.download_state import (
    Action,
    AddParent,
    AskFallback,
    DownloadRules,
    DownloadState,
    Event,
    FallbackAnswer,
    GiveUp,
    HashesKnown,
    ParentHas,
    ParentInfo,
    ParentLost,
    ReportDue,
    SchedulerAnswer,
    SendReport,
    Tick,
)
from shoal.p2p.download_state.scheduler_messages import answer_event, report_message
from shoal.p2p.pieces import PieceGeometry
from shoal.p2p.protocol import JoinRequest, Report
from shoal.scheduler.config import SchedulerConfig
from shoal.scheduler.state import SchedulerState

from .test_download_state import Clock
from .test_download_state_refusals import refused

MIB = 1 << 20
PIECES = 10
SIZE = PIECES * MIB
EVERY = {i: f"{i:064x}" for i in range(PIECES)}


def seeded(digest: str, *seeds: str) -> SchedulerState:
    """A scheduler whose task for ``digest`` has ``seeds`` complete, with every piece hash."""
    sched = SchedulerState(SchedulerConfig(), rng=random.Random(7))
    for seed in seeds:
        sched.join(digest, JoinRequest(seed, f"{seed}:1", SIZE, MIB), 0.0)
        report = Report(seed, f"{seed}:1", PIECES, SIZE, complete=True, hashes=EVERY, size=SIZE, piece_size=MIB)
        sched.report(digest, report, 0.1)
    return sched


def test_refusals_for_taken_fallback_leases_do_not_send_a_node_to_the_registry() -> None:
    """The seed that read the blob leaves (its node drained) once every hash is published; the
    hashes stay with the task. Two stalled nodes, a and b, take the blob's two fallback leases
    and read the registry (a large layer: no piece of theirs reaches us yet). Our asks are
    refused because both leases are taken, not because a complete copy exists (none does),
    yet the answers say every hash is known: after three of them the download reads the
    registry without a lease, a third reader beside the two the scheduler allows, and so
    does every other node stalled alike."""
    clock = Clock()
    clock.now = 0.0
    digest = "sha256:" + "c" * 64
    sched = SchedulerState(SchedulerConfig(), rng=random.Random(7))
    # we hold the origin lease of another layer of the image (a rollout spreads them): the
    # open lease of this one goes to a reader that holds none
    other = "sha256:" + "d" * 64
    assert sched.join(other, JoinRequest("me", "me:1", SIZE, MIB), 0.0).role == "fetcher"
    assert sched.join(digest, JoinRequest("seed", "seed:1", SIZE, MIB), 0.0).role == "fetcher"
    done = Report("seed", "seed:1", PIECES, SIZE, complete=True, hashes=EVERY, size=SIZE, piece_size=MIB)
    sched.report(digest, done, 0.5)
    sched.leave(digest, "seed")
    task = sched.tasks[digest]
    assert task.hashes_known == PIECES
    assert len(task.seeders) == 0
    for reader in ("a", "b"):  # stalled before us: both fallback leases are theirs
        sched.join(digest, JoinRequest(reader, f"{reader}:1", SIZE, MIB), 1.0)
        ask = Report(reader, f"{reader}:1", 0, 0, size=SIZE, piece_size=MIB, wants_fallback=True)
        assert sched.report(digest, ask, 1.5).fallback

    clock.now = 2.0
    geometry = PieceGeometry(SIZE, MIB)
    s = DownloadState(peer_id="me", geometry=geometry, rules=DownloadRules(), clock=clock, salt="x")
    pending: list[Event] = [answer_event(sched.join(digest, JoinRequest("me", "me:1", SIZE, MIB), clock.now))]
    refusals = 0
    while clock.now < 150.0:
        pending.append(ReportDue())
        while pending:
            for action in s.apply(pending.pop(0)):
                if isinstance(action, GiveUp):
                    assert action.fallback_lease or len(task.seeders) > 0, (
                        f"{clock.now:.0f}s: to the registry without a lease after {refusals} refusals, "
                        f"beside {len(task.fallbacks)} fallback readers and no complete copy: {action}"
                    )
                    return
                if isinstance(action, AddParent):  # a and b: nothing of theirs has reached us yet
                    pending.append(ParentHas(action.parent.peer_id, frozenset()))
                if isinstance(action, SendReport):
                    view = sched.report(digest, report_message(action, "me", "me:1", geometry), clock.now)
                    pending.append(answer_event(view))
                    if action.wants_fallback:
                        refusals += not view.fallback
                        pending.append(FallbackAnswer(granted=view.fallback))
        clock.now += 0.25
        if clock.now % 5 == 0:  # the readers hold their leases (``keep_fallback``)
            for reader in ("a", "b"):
                beat = Report(reader, f"{reader}:1", 0, 0, size=SIZE, piece_size=MIB, wants_fallback=True)
                sched.report(digest, beat, clock.now)
    assert refusals >= 3  # the scenario stalled as described: the download waited


def stall_and_be_refused(s: DownloadState, clock: Clock, hashes_known: int) -> list[Action]:
    clock.now += 25.1
    assert isinstance(s.apply(Tick())[-1], AskFallback)
    out = s.apply(SchedulerAnswer(fetcher="holder", parents=(ParentInfo("p1", "p1:1"),), hashes_known=hashes_known))
    return out + s.apply(FallbackAnswer(granted=False))


def test_refusals_while_hashes_were_missing_do_not_count() -> None:
    """Two asks refused while the holder was still reading the registry (3 of 10 hashes): the
    rule waits then ("waiting for it spares the registry"). The holder's last pieces come in
    a burst (the rest of the blob it held from parents, or a seed that publishes every hash
    at once), and the very next refused ask, the first with every hash known, sends the
    download to the registry beside the copy just completed: the count kept the refusals
    made while hashes were missing, which the rule says are no evidence."""
    clock = Clock()
    clock.now = 0.0
    s = DownloadState(peer_id="me", size=SIZE, piece_size=MIB, rules=DownloadRules(), clock=clock, salt="x")
    s.apply(SchedulerAnswer(fetcher="holder", parents=(ParentInfo("p1", "p1:1"),), hashes_known=3))
    s.apply(HashesKnown({i: EVERY[i] for i in range(3)}))
    for _ in range(2):
        assert not any(isinstance(a, GiveUp) for a in stall_and_be_refused(s, clock, 3))
    out = stall_and_be_refused(s, clock, PIECES)
    assert not any(isinstance(a, GiveUp) for a in out), out
    # the burst's hashes reach us by the long poll, a moment after the answer that counted them
    s.apply(HashesKnown({i: EVERY[i] for i in range(3, PIECES)}))
    assert not s.finished


def test_a_certificate_refused_after_a_parent_took_it_still_reaches_the_registry() -> None:
    """F6 arriving mid-pull: the node's certificate expires (its renewal failed) or the
    fleet's CA bundle rotates past it while a layer downloads. Its link to p1, made before,
    keeps working and brings a bitfield; then p1 goes away (it restarted, the link idled
    out). From then on every peer refuses the certificate, p1 included. The
    scheduler refuses every stall ask beside the seed's complete copy; the pull must still
    end at the registry, as a direct pull would."""
    clock = Clock()
    clock.now = 0.0
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
