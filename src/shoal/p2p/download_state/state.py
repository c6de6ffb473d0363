"""The download's state: every rule of :mod:`shoal.p2p.download_state`, in one object."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from shoal.p2p.download_state.actions import (
    Action,
    AddParent,
    AnnouncePieces,
    AskFallback,
    CancelRequest,
    Complete,
    DiscardPiece,
    DropParent,
    GiveUp,
    RequestPiece,
    SendReport,
    StartOriginFetch,
    StopOriginFetch,
    WritePiece,
)
from shoal.p2p.download_state.events import (
    BytesArrived,
    Event,
    FallbackAnswer,
    HashesKnown,
    NodeFetching,
    OriginFetchFailed,
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
    Tick,
)
from shoal.p2p.download_state.reports import ReportBook
from shoal.p2p.download_state.rules import ASK_RETRY_PAUSES, MOVED, SPARE_FETCHER_FOR, DownloadRules
from shoal.p2p.pieces import PieceGeometry
from shoal.p2p.policy.piece_selection import next_piece


@dataclass
class _Parent:
    info: ParentInfo
    have: list[bool]
    in_flight: set[int] = field(default_factory=set)
    errors: int = 0
    received: int = 0
    added_at: float = 0.0


class DownloadState:
    """Everything one download knows; changed only by :meth:`apply`.

    Parameters:
        peer_id: our id (never our own parent).
        geometry: how the blob is cut (:class:`~shoal.p2p.pieces.PieceGeometry`); ``size``
            and ``piece_size`` instead make one.
        rules: the knobs.
        clock: monotonic seconds, injected.
        avoided: peer id -> time until which it is avoided (shared by all downloads; read only).
        salt: this node's tie-breaker for piece choice (peer id and digest).
    """

    def __init__(
        self,
        *,
        peer_id: str,
        geometry: PieceGeometry | None = None,
        size: int | None = None,
        piece_size: int | None = None,
        rules: DownloadRules | None = None,
        clock: Callable[[], float] = time.monotonic,
        avoided: Mapping[str, float] | None = None,
        salt: str = "",
    ) -> None:
        if geometry is None:
            if size is None or piece_size is None:
                raise TypeError("DownloadState needs a geometry, or a size and a piece size")
            geometry = PieceGeometry(size, piece_size)
        self.peer_id = peer_id
        self.geometry = geometry
        self.size = geometry.size
        self.piece_size = geometry.piece_size
        self.count = geometry.count
        self.rules = rules or DownloadRules()
        self.clock = clock
        self.avoided = avoided if avoided is not None else {}
        self.salt = salt
        self.missing: set[int] = set(range(self.count))
        self.in_flight: dict[int, str] = {}
        """piece -> the parent it is asked of"""
        self.asked_at: dict[int, float] = {}
        self.extra: dict[int, str] = {}
        """endgame: piece -> the second parent it is asked of"""
        self.availability = [0] * self.count
        self.parents: dict[str, _Parent] = {}
        self.banned: set[str] = set()
        self.unreported_failures: set[str] = set()
        """parents dropped since the last report (the owner sends and clears them)"""
        self.hashes: dict[int, str] = {}
        self.awaiting_hash: dict[int, tuple[str, str, float]] = {}
        """piece -> (parent, its sha256, when it arrived), received before its hash was known"""
        self.writing: set[int] = set()
        self.contiguous = 0
        self.bytes_received = 0
        self.fetching = False
        self.sched_failures = 0
        self.finished = False
        self.asking: str | None = None
        """why we asked for a fallback lease, while the answer is out"""
        self._asks_refused = 0
        """fallback asks refused since the last progress (``refused_asks``)"""
        self._copy_named = False
        """the scheduler's last answer named a parent that holds the whole blob, and every
        piece's hash is known: a fallback ask refused then is refused for that copy's sake"""
        self._ask_sent = False
        self._asked_at = 0.0
        self._ask_failures = 0
        self.fallback_lease = False
        """the scheduler granted us a fallback lease (we report to hold it while we fetch)"""
        self.suppliers: set[str] = set()
        """lease holders whose published hashes we checked pieces by: a parent whose piece
        matched only relayed what the holder hashed, so a wrong blob is the holder's"""
        self.holder: str | None = None
        """the blob's origin fetcher, as the scheduler last named it"""
        self.node_fetching = False
        """another download of this node fetches its blob from the origin (``NodeFetching``)"""
        self._last_arrival = -math.inf
        """when a piece last came from a parent other than the fetcher (never: nothing yet)"""
        self.announced: set[int] = set()
        """pieces told to our children"""
        self._prefix_announced = 0
        self.reports = ReportBook(self.rules, self.count, clock())
        self._last_progress = clock()
        self._last_state = self._progress()

    # -- the one way in ----------------------------------------------------------------------

    def apply(self, event: Event) -> list[Action]:
        """Apply one event; the actions to carry out, in order."""
        if self.finished:
            return self._after_finish(event)
        out: list[Action] = []
        match event:
            case SchedulerAnswer():
                self._on_answer(event, out)
            case SchedulerFailed():
                self._on_scheduler_failed(out)
            case ParentHas():
                self._on_has(event)
            case HashesKnown():
                self._on_hashes(event, out)
            case PiecesHashed():
                self.reports.hashed(event.hashes)
            case PieceArrived():
                self._on_arrived(event, out)
            case PieceWritten():
                self.writing.discard(event.index)
                if event.index in self.missing:
                    self.missing.discard(event.index)
                    self.reports.written += 1
                self._announce((event.index,), out)
            case PieceFailed():
                self._on_failed(event, out)
            case PieceRejected():
                self._release_from(event.index, event.peer_id)
                if (p := self.parents.get(event.peer_id)) is not None and p.have[event.index]:
                    p.have[event.index] = False
                    self.availability[event.index] -= 1
            case ParentLost():
                self._drop(event.peer_id, event.reason, out, ban=not event.unreachable)
            case BytesArrived():
                self.bytes_received += event.n
            case PrefixAdvanced():
                self._on_prefix(event.contiguous, out)
            case OriginFetchFailed():
                self.fetching = False
                self._finish(GiveUp(f"origin: {event.reason}"), out)
            case FallbackAnswer():
                self._on_fallback(event, out)
            case NodeFetching():
                self.node_fetching = event.active
            case Tick() | ReportDue():
                pass
        if not self.finished:
            self._check_time(out)
        if not self.finished:
            # news of one parent's pieces can only fill that parent's lanes (the rest were
            # planned already); every other event may free lanes anywhere
            self._plan(out, only=event.peer_id if isinstance(event, ParentHas) else None)
        if isinstance(event, ReportDue | PiecesHashed):
            # reports go out when their time has come (the owner wakes us at ``wake_at``),
            # or at once for the fetcher's new hashes and a fallback ask
            self._report_if_due(out)
        return out

    def wake_at(self) -> float | None:
        """When to apply :class:`ReportDue` next (monotonic seconds), or None: no report is
        waiting for time (one is out, or the download is over)."""
        if self.finished and not self.fallback_lease:
            return None
        urgent = (self.asking is not None and not self._ask_sent) or (
            self.fetching and bool(self.reports.unpublished())
        )
        wanting = len(self.parents) < self.rules.max_parents and not self.fetching and not self.finished
        fetching = self.fetching and not self.finished
        return self.reports.due_at(urgent=urgent, wanting_parents=wanting, fetching=fetching)

    # -- reports -----------------------------------------------------------------------------

    def _report_if_due(self, out: list[Action]) -> None:
        due = self.wake_at()
        if due is not None and due <= self.clock():
            out.append(self._report(wants_fallback=self.fallback_lease or self.asking is not None))

    def _report(self, *, wants_fallback: bool = False, final: bool = False) -> SendReport:
        report = SendReport(
            pieces=self.count - len(self.missing),
            contiguous=self.contiguous,
            hashes=self.reports.unpublished(),
            failed_parents=tuple(sorted(self.unreported_failures)),
            wants_fallback=wants_fallback,
            final=final,
        )
        if not final:
            self.reports.sent(report, self.clock())
            if wants_fallback and self.asking is not None:
                self._ask_sent = True
        return report

    def _on_report_answered(self) -> None:
        report = self.reports.answered()
        if report is not None:
            self.unreported_failures.difference_update(report.failed_parents)

    def _on_scheduler_failed(self, out: list[Action]) -> None:
        self.sched_failures += 1
        now = self.clock()
        asked = self._ask_sent and self.asking is not None
        pause = self.rules.report_interval
        if asked:
            self._ask_sent = False
            self._ask_failures += 1
            if self._ask_failures > len(ASK_RETRY_PAUSES):
                # nobody to coordinate with: the pull must not fail
                self.reports.failed(now, pause)
                self._finish(GiveUp(self.asking or "scheduler: lost"), out)
                return
            pause = ASK_RETRY_PAUSES[self._ask_failures - 1]
        self.reports.failed(now, pause)

    def _after_finish(self, event: Event) -> list[Action]:
        """A download that gave up under a fallback lease reports to hold the lease while its
        owner fetches the rest from the origin; nothing else happens after the end."""
        if not self.fallback_lease:
            return []
        out: list[Action] = []
        match event:
            case SchedulerAnswer():
                self._on_report_answered()
            case SchedulerFailed():
                self.reports.failed(self.clock(), self.rules.report_interval)
            case PrefixAdvanced():
                self.contiguous = max(self.contiguous, min(event.contiguous, self.size))
            case ReportDue():
                self._report_if_due(out)
        return out

    def _announce(self, indices: Iterable[int], out: list[Action]) -> None:
        fresh = tuple(i for i in indices if i not in self.announced)
        if fresh:
            self.announced.update(fresh)
            out.append(AnnouncePieces(fresh))

    # -- rules -------------------------------------------------------------------------------

    def _on_answer(self, view: SchedulerAnswer, out: list[Action]) -> None:
        self.sched_failures = 0
        self._on_report_answered()
        self.holder = view.fetcher
        if view.fetcher is not None and view.hashes_known:
            self.suppliers.add(view.fetcher)
        self._copy_named = view.complete_named and view.hashes_known >= self.count
        if view.fetcher == self.peer_id:
            # hashes it lost go again, or a child that joins now could check nothing
            self.reports.scheduler_holds(view.hashes_known)
        if view.fetcher == self.peer_id and not self.fetching:
            self.fetching = True
            out.append(StartOriginFetch(self.contiguous))
        elif view.fetcher not in (None, self.peer_id) and self.fetching:
            # two origin fetches of one blob would double the registry's bytes
            self.fetching = False
            out.append(StopOriginFetch(view.fetcher))
        now = self.clock()
        named = {p.peer_id for p in view.parents}
        # a move names some of ours still and moves one: the first new parent takes the place
        # of one of ours no longer named, whatever our count (the scheduler stopped counting
        # that link). An answer naming none of ours is a scheduler that does not know them (a
        # failover): ours keep working, nothing is swapped; nor more than one per answer.
        swap = not named.isdisjoint(self.parents)
        for parent in view.parents:
            pid = parent.peer_id
            if pid in self.parents or pid in self.banned or pid == self.peer_id:
                continue
            if self.avoided.get(pid, 0.0) > now:
                self.banned.add(pid)
                continue
            stale = next((p for p in self.parents if p not in named), None) if swap else None
            swap = False
            if stale is not None:
                self._drop(stale, MOVED, out, ban=False)
            elif len(self.parents) >= self.rules.max_parents:
                break
            self.parents[pid] = _Parent(parent, [False] * self.count, added_at=now)
            out.append(AddParent(parent))

    def _on_has(self, event: ParentHas) -> None:
        p = self.parents.get(event.peer_id)
        if p is None:
            return  # dropped meanwhile
        for i in event.pieces:
            if 0 <= i < self.count and not p.have[i]:
                p.have[i] = True
                self.availability[i] += 1

    def _on_hashes(self, event: HashesKnown, out: list[Action]) -> None:
        for i, h in event.hashes.items():
            if 0 <= i < self.count:
                self.hashes.setdefault(i, h)  # the lease holder's first word stands
        for i in [i for i in self.awaiting_hash if i in self.hashes]:
            peer, sha, _ = self.awaiting_hash.pop(i)
            self._verify(peer, i, sha, out)

    def _on_arrived(self, event: PieceArrived, out: list[Action]) -> None:
        if event.peer_id != self.holder:
            self._last_arrival = self.clock()  # the fetcher's own pieces are not "from elsewhere"
        for other in self._release(event.index):
            if other != event.peer_id:
                out.append(CancelRequest(other, event.index))  # endgame: the other copy
        if (p := self.parents.get(event.peer_id)) is not None:
            p.errors = 0
        if event.index in self.hashes:
            self._verify(event.peer_id, event.index, event.sha256, out)
        else:
            earlier = self.awaiting_hash.get(event.index)
            if earlier is not None and earlier[0] != event.peer_id:
                out.append(DiscardPiece(event.index, "a later copy arrived", earlier[0]))
            self.awaiting_hash[event.index] = (event.peer_id, event.sha256, self.clock())

    def _verify(self, peer: str, index: int, sha: str, out: list[Action]) -> None:
        if sha != self.hashes[index]:
            until = self.clock() + self.rules.avoid_corrupt_for
            out.append(DiscardPiece(index, f"corrupt piece from {peer}", peer, corrupt=True))
            self._drop(peer, f"piece {index} is corrupt", out, avoid_until=until)
            return
        if index not in self.missing or index in self.writing:
            out.append(DiscardPiece(index, "already held", peer))
            return
        self.writing.add(index)
        if (p := self.parents.get(peer)) is not None:
            p.received += 1
        out.append(WritePiece(index, peer))

    def _on_failed(self, event: PieceFailed, out: list[Action]) -> None:
        self._release_from(event.index, event.peer_id)
        p = self.parents.get(event.peer_id)
        if p is None:
            return
        p.errors += 1
        if p.errors >= self.rules.parent_errors:
            self._drop(event.peer_id, f"{p.errors} failed requests in a row: {event.reason}", out)

    def _on_prefix(self, contiguous: int, out: list[Action]) -> None:
        self.contiguous = max(self.contiguous, min(contiguous, self.size))
        done = self.geometry.pieces_within(self.contiguous)
        for i in [i for i in self.missing if i < done]:
            self.missing.discard(i)
        if done > self._prefix_announced:
            self._announce(range(self._prefix_announced, done), out)
            self._prefix_announced = done

    def _release(self, index: int) -> list[str]:
        """Forget every request of ``index``; the parents it was asked of."""
        asked = [peer for peer in (self.in_flight.get(index), self.extra.get(index)) if peer is not None]
        for peer in asked:
            self._release_from(index, peer)
        return asked

    def _release_from(self, index: int, peer: str) -> None:
        """Forget ``peer``'s request of ``index`` (an endgame copy takes the main place)."""
        if (p := self.parents.get(peer)) is not None:
            p.in_flight.discard(index)
        if self.extra.get(index) == peer:
            del self.extra[index]
        elif self.in_flight.get(index) == peer:
            second = self.extra.pop(index, None)
            if second is None:
                del self.in_flight[index]
                self.asked_at.pop(index, None)
            else:
                self.in_flight[index] = second

    def _drop(
        self, peer: str, reason: str, out: list[Action], avoid_until: float | None = None, *, ban: bool = True
    ) -> None:
        p = self.parents.pop(peer, None)
        if p is None and avoid_until is None:
            return  # not a parent (any more): nothing to stop
        if ban:
            self.banned.add(peer)
            self.unreported_failures.add(peer)
        self.reports.wanted = True
        if p is not None:
            for i, bit in enumerate(p.have):
                if bit:
                    self.availability[i] -= 1
            for i in list(p.in_flight):
                self._release_from(i, peer)
                if not ban:
                    # a healthy parent we leave: it need not send what we no longer await
                    out.append(CancelRequest(peer, i))
        out.append(DropParent(peer, reason, avoid_until))

    def _progress(self) -> tuple[int, int, int, int]:
        return self.contiguous, len(self.missing), self.bytes_received, len(self.hashes)

    def _check_time(self, out: list[Action]) -> None:
        now = self.clock()
        if not self.missing:
            self._finish(Complete(), out)
            return
        for i in [i for i, (_, _, t) in self.awaiting_hash.items() if now - t > self.rules.hash_wait]:
            peer = self.awaiting_hash.pop(i)[0]
            out.append(DiscardPiece(i, f"no hash for piece {i} after {self.rules.hash_wait:.0f}s", peer))
        for i in [i for i, t in self.asked_at.items() if now - t > self.rules.piece_timeout]:
            asked = self.in_flight.get(i)
            if asked is None:
                continue  # its parent was dropped a moment ago
            out.append(CancelRequest(asked, i))
            self._on_failed(PieceFailed(asked, i, f"no answer in {self.rules.piece_timeout:.0f}s"), out)
        state = self._progress()
        if state != self._last_state:
            self._last_state, self._last_progress = state, now
            self._asks_refused = 0
        if self.fetching:
            return
        idle = now - self._last_progress
        if self.asking is not None:
            return
        if self.sched_failures >= self.rules.scheduler_failures and idle > self.rules.scheduler_lost_grace:
            self._ask(GiveUp("scheduler: lost"), out)
        elif idle > self.rules.stall_timeout:
            self._ask(GiveUp(f"stalled: no progress for {self.rules.stall_timeout:.0f}s"), out)

    def _ask(self, give_up: GiveUp, out: list[Action]) -> None:
        self.asking = give_up.reason
        self._asked_at = self.clock()
        out.append(AskFallback(give_up.reason))

    def _on_fallback(self, event: FallbackAnswer, out: list[Action]) -> None:
        if self.asking is None:
            return
        self._ask_failures = 0
        if event.granted:
            self.fallback_lease = True
            self._finish(GiveUp(self.asking, fallback_lease=True), out)
            return
        # counted only when refused for a complete copy's sake: refused because the blob's
        # fallback leases are taken, the registry is being read for us already
        self._asks_refused = self._asks_refused + 1 if self._copy_named else 0
        if self._asks_refused >= self.rules.refused_asks:
            # a complete copy is in the swarm, out of our reach for three stalls running
            self._finish(GiveUp(f"{self._asks_refused} fallback asks refused without progress"), out)
            return
        # refused: the registry is serving others; wait in the swarm for another while. A
        # parent that told us of no piece in all that time is asked afresh: dropped, not banned,
        # the scheduler's next answer names it again and renewed interest brings a new bitfield
        # (a bitfield lost to a race with the parent's completion must not stall us for ever).
        self.asking = None
        self._ask_sent = False
        self._last_progress = self.clock()
        # Only one that was our parent through the whole stall: the refusing answer names the
        # complete copy it was refused for, and an answer just before the ask (in the agent,
        # the very event whose apply asked) may name others; dropped at once, they were thrown
        # away before their bitfield could come. A young one is dropped by the next refusal.
        since = self._asked_at - self.rules.stall_timeout
        for peer in [peer for peer, p in self.parents.items() if p.added_at <= since and not any(p.have)]:
            self._drop(peer, "told of no piece while we stalled", out, ban=False)

    def _finish(self, action: GiveUp | Complete, out: list[Action]) -> None:
        self.finished = True
        if isinstance(action, Complete) and self.reports.unpublished():
            out.append(self._report(final=True))  # our fetch's last hashes: children wait for them
        out.append(action)

    def _plan(self, out: list[Action], only: str | None = None) -> None:
        """Fill every parent's free lanes (parents in the order they came), or ``only``'s."""
        if (len(self.awaiting_hash) + len(self.in_flight)) * self.piece_size >= max(
            self.rules.max_unverified, 2 * self.piece_size
        ) and self.awaiting_hash:
            return  # the hashes are late: what arrives would only wait in memory
        read_piece = self.contiguous // self.piece_size
        requestable = self._requestable() - self.in_flight.keys()
        spared = self._spared()
        for pid, p in self.parents.items():
            if (only is not None and pid != only) or pid == spared:
                continue
            while (
                requestable
                and len(p.in_flight) < self.rules.lanes_per_parent
                and len(self.in_flight) + len(self.extra) < self.rules.max_requests
            ):
                index = next_piece(
                    parent_has=p.have,
                    missing=requestable,
                    in_flight=self.in_flight,
                    availability=self.availability,
                    read_piece=read_piece,
                    window=self.rules.window,
                    salt=self.salt,
                )
                if index is None:
                    break
                self.in_flight[index] = pid
                self.asked_at[index] = self.clock()
                p.in_flight.add(index)
                requestable.discard(index)
                out.append(RequestPiece(pid, index))
        self._plan_endgame(out)

    def _plan_endgame(self, out: list[Action]) -> None:
        """Nothing is left to ask for but what is in flight: free lanes ask again, oldest first."""
        if not self.in_flight or self._requestable() - self.in_flight.keys():
            return
        now = self.clock()
        oldest = sorted(
            (t, i) for i, t in self.asked_at.items() if i not in self.extra and now - t >= self.rules.endgame_after
        )
        spared = self._spared() if oldest else None
        for _, index in oldest:
            holder = self.in_flight.get(index)
            if len(self.in_flight) + len(self.extra) >= self.rules.max_requests:
                return
            for pid, p in self.parents.items():
                if pid != holder and pid != spared and p.have[index] and len(p.in_flight) < self.rules.lanes_per_parent:
                    self.extra[index] = pid
                    p.in_flight.add(index)
                    out.append(RequestPiece(pid, index))
                    break

    def _spared(self) -> str | None:
        """The parent not to ask now: our blob's origin fetcher while another download of this
        node fetches too, its hashes still coming (the fetch is on), and pieces come from
        elsewhere. A fetching node's upload is full with its own blob's copies; a new piece
        it takes from another fetcher is one it must pass on too, while the nodes that fetch
        nothing could."""
        holder = self.holder
        if not self.node_fetching or holder is None or self.fetching or len(self.hashes) >= self.count:
            return None
        if self.clock() - self._last_arrival >= SPARE_FETCHER_FOR:
            # nothing came from elsewhere (a request out to a parent that sends nothing does
            # not count: it would spare the fetcher until the piece timed out)
            return None
        return holder

    def _requestable(self) -> set[int]:
        return self.missing - self.writing - self.awaiting_hash.keys()
