"""One blob's download through the swarm as a pure state: events in, actions out.

``shoal.agent.swarm.SwarmDownload`` is the one task that owns a download's state. Here one object
holds the missing pieces, the requests in flight, each parent's pieces and errors, the lease
and the stall clocks, and changes only in :meth:`DownloadState.apply`; the task that owns it
reads I/O workers' results from a queue, applies them, and carries out the returned actions
(send a request, start or stop the origin fetch, write a verified piece, give up). Time comes
from an injected clock, so every rule below is a millisecond unit test.

Rules (each is one that ``tests/integration/test_swarm.py`` proves with real processes):

- **Origin once.** Only the lease holder fetches from the origin: a scheduler answer naming us
  fetcher starts the fetch; one naming another holder while we fetch stops ours.
- **Pipelining.** A parent's pieces are requestable as soon as it announces them (bitfield, then
  one "have" per verified piece): a child fetches while its parent is still downloading.
- **Endgame.** When every piece still missing is already asked for, a free lane asks a
  second parent for the oldest request (one extra copy at most, after ``endgame_after``);
  the first copy to arrive wins and the other request is cancelled. The last pieces of a
  blob otherwise wait on whichever parent's queue they landed in.
- **Bounded asking.** At most ``max_parents`` parents and ``lanes_per_parent`` requests in flight
  to each; which piece comes from :func:`shoal.p2p.policy.piece_selection.next_piece`.
- **Verify, then write.** A piece is written only if its sha256 matches the hash the lease
  holder published; one that arrives before its hash waits for it (at most ``hash_wait``).
- **Lying peers.** A corrupt piece drops its parent, bans it for this blob, avoids it for every
  blob for ``avoid_corrupt_for`` and reports it to the scheduler.
- **Failing parents.** ``parent_errors`` failed requests in a row drop a parent; a lost parent's
  pieces stop counting and its requests go back to the pool at once.
- **Stalls fall back, a few at a time.** With no progress for ``stall_timeout`` (and no origin
  fetch of ours) the download asks the scheduler for one of the blob's few fallback leases;
  granted, the rest comes from the origin; refused, it waits in the swarm for another
  ``stall_timeout``. On saturated cores every node stalls at once: without the limit they
  would all go to the registry, and its egress would be N times the image. Progress is
  anything that moved: the verified prefix, pieces held, bytes arriving, or new piece hashes
  (the fetcher getting further).
- **Slow parents.** A request unanswered for ``piece_timeout`` is cancelled and counts as a
  failed request (a dead parent's link may take longer than that to be noticed).
- **The scheduler may die.** Failed reports alone do not end a download whose pieces keep coming;
  ``scheduler_failures`` in a row plus ``scheduler_lost_grace`` without progress ask for a
  fallback lease too (the owner takes an ask that cannot reach the scheduler as a yes:
  with nobody to coordinate with, the pull must not fail).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from shoal.p2p.pieces import PieceGeometry
from shoal.p2p.policy.piece_selection import next_piece

__all__ = [
    "Action",
    "AddParent",
    "AskFallback",
    "BytesArrived",
    "CancelRequest",
    "Complete",
    "DiscardPiece",
    "DownloadRules",
    "DownloadState",
    "DropParent",
    "Event",
    "FallbackAnswer",
    "GiveUp",
    "HashesKnown",
    "OriginFetchFailed",
    "ParentHas",
    "ParentInfo",
    "ParentLost",
    "PieceArrived",
    "PieceFailed",
    "PieceRejected",
    "PieceWritten",
    "PrefixAdvanced",
    "RequestPiece",
    "SchedulerAnswer",
    "SchedulerFailed",
    "StartOriginFetch",
    "StopOriginFetch",
    "Tick",
    "WritePiece",
]


@dataclass(frozen=True, slots=True)
class DownloadRules:
    """The swarm's knobs for one download (the agent config's ``swarm:`` section sets them)."""

    max_parents: int = 12
    lanes_per_parent: int = 2
    max_requests: int = 12
    """requests in flight for one download, over all its parents: each arriving piece has a
    buffer of its own until it is written, so this bounds the download's memory"""
    stall_timeout: float = 25.0
    """longer than the scheduler's lease TTL (15 s): a dead fetcher's successor takes over first"""
    hash_wait: float = 25.0
    """how long a received piece waits for its published hash before it is discarded"""
    parent_errors: int = 3
    avoid_corrupt_for: float = 600.0
    scheduler_failures: int = 3
    scheduler_lost_grace: float = 10.0
    window: int = 4
    """pieces ahead of the reader wanted in order (``next_piece``)"""
    piece_timeout: float = 30.0
    """seconds a request may go unanswered before it is cancelled and counted as failed"""
    endgame_after: float = 0.5
    """seconds a request must be out before a second parent is asked for the same piece"""
    max_unverified: int = 64 << 20
    """bytes of received pieces waiting for their hash, at most: beyond, no new requests (a
    scheduler without hashes, or a peer sending junk, must not fill the agent's memory)"""


@dataclass(frozen=True, slots=True)
class ParentInfo:
    peer_id: str
    address: str


# -- events (what happened) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SchedulerAnswer:
    """The scheduler's view after a join or a report: our role, the lease holder, parents."""

    fetcher: str | None
    parents: tuple[ParentInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class SchedulerFailed:
    """A report did not get through."""


@dataclass(frozen=True, slots=True)
class ParentHas:
    """A parent holds these pieces (its bitfield, or one "have")."""

    peer_id: str
    pieces: frozenset[int]


@dataclass(frozen=True, slots=True)
class HashesKnown:
    """Piece hashes published by the lease holder."""

    hashes: Mapping[int, str]


@dataclass(frozen=True, slots=True)
class PieceArrived:
    """A worker received a whole piece from ``peer_id`` and hashed it (not written yet)."""

    peer_id: str
    index: int
    sha256: str


@dataclass(frozen=True, slots=True)
class PieceWritten:
    """A verified piece is on disk."""

    index: int


@dataclass(frozen=True, slots=True)
class PieceFailed:
    """A request to a parent failed (connect, timeout, broken transfer)."""

    peer_id: str
    index: int
    reason: str


@dataclass(frozen=True, slots=True)
class PieceRejected:
    """The parent said it does not have the piece (after all)."""

    peer_id: str
    index: int


@dataclass(frozen=True, slots=True)
class ParentLost:
    """The link to a parent broke, or could not be made (``unreachable``: not banned, the
    scheduler may hand it out again; a parent busy under a rollout is slow to accept)."""

    peer_id: str
    reason: str
    unreachable: bool = False


@dataclass(frozen=True, slots=True)
class BytesArrived:
    """Body bytes of pieces still arriving: slow is not stalled."""

    n: int


@dataclass(frozen=True, slots=True)
class PrefixAdvanced:
    """The blob's verified prefix grew (the origin fetch writes in order)."""

    contiguous: int


@dataclass(frozen=True, slots=True)
class OriginFetchFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class FallbackAnswer:
    """The scheduler's word on our ask to fetch the rest from the origin."""

    granted: bool


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed (the owner wakes about once a second to let the stall rules look)."""


Event = (
    SchedulerAnswer
    | SchedulerFailed
    | ParentHas
    | HashesKnown
    | PieceArrived
    | PieceWritten
    | PieceFailed
    | PieceRejected
    | ParentLost
    | BytesArrived
    | PrefixAdvanced
    | OriginFetchFailed
    | FallbackAnswer
    | Tick
)

# -- actions (what the owner must do) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddParent:
    """Connect to (or reuse the connection to) this parent and say we are interested."""

    parent: ParentInfo


@dataclass(frozen=True, slots=True)
class RequestPiece:
    peer_id: str
    index: int


@dataclass(frozen=True, slots=True)
class WritePiece:
    """Write the piece ``peer_id`` sent: its hash matched."""

    index: int
    peer_id: str


@dataclass(frozen=True, slots=True)
class DiscardPiece:
    """Drop the piece ``peer_id`` sent (its buffer is not needed)."""

    index: int
    reason: str
    peer_id: str
    corrupt: bool = False


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Tell the parent we no longer want this piece (it timed out)."""

    peer_id: str
    index: int


@dataclass(frozen=True, slots=True)
class DropParent:
    """Stop using this parent for this blob; if ``avoid_until`` is set, for every blob until then."""

    peer_id: str
    reason: str
    avoid_until: float | None = None


@dataclass(frozen=True, slots=True)
class StartOriginFetch:
    """We hold the lease: fetch from the origin from the verified prefix on."""

    offset: int


@dataclass(frozen=True, slots=True)
class StopOriginFetch:
    """The lease went to ``holder``: stop our origin fetch, take the rest from the swarm."""

    holder: str


@dataclass(frozen=True, slots=True)
class AskFallback:
    """The swarm is stuck: ask the scheduler for a fallback lease before going to the origin."""

    reason: str


@dataclass(frozen=True, slots=True)
class GiveUp:
    """The swarm cannot finish: fetch the rest from the origin (the pull must not fail)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Complete:
    pass


Action = (
    AddParent
    | RequestPiece
    | CancelRequest
    | WritePiece
    | DiscardPiece
    | DropParent
    | StartOriginFetch
    | StopOriginFetch
    | AskFallback
    | GiveUp
    | Complete
)


@dataclass
class _Parent:
    info: ParentInfo
    have: list[bool]
    in_flight: set[int] = field(default_factory=set)
    errors: int = 0
    received: int = 0


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
        self._last_progress = clock()
        self._last_state = self._progress()

    # -- the one way in ----------------------------------------------------------------------

    def apply(self, event: Event) -> list[Action]:
        """Apply one event; the actions to carry out, in order."""
        if self.finished:
            return []
        out: list[Action] = []
        match event:
            case SchedulerAnswer():
                self._on_answer(event, out)
            case SchedulerFailed():
                self.sched_failures += 1
            case ParentHas():
                self._on_has(event)
            case HashesKnown():
                self._on_hashes(event, out)
            case PieceArrived():
                self._on_arrived(event, out)
            case PieceWritten():
                self.writing.discard(event.index)
                self.missing.discard(event.index)
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
                self._on_prefix(event.contiguous)
            case OriginFetchFailed():
                self.fetching = False
                self._finish(GiveUp(f"origin: {event.reason}"), out)
            case FallbackAnswer():
                self._on_fallback(event, out)
            case Tick():
                pass
        if not self.finished:
            self._check_time(out)
        if not self.finished:
            # news of one parent's pieces can only fill that parent's lanes (the rest were
            # planned already); every other event may free lanes anywhere
            self._plan(out, only=event.peer_id if isinstance(event, ParentHas) else None)
        return out

    # -- rules -------------------------------------------------------------------------------

    def _on_answer(self, view: SchedulerAnswer, out: list[Action]) -> None:
        self.sched_failures = 0
        if view.fetcher == self.peer_id and not self.fetching:
            self.fetching = True
            out.append(StartOriginFetch(self.contiguous))
        elif view.fetcher not in (None, self.peer_id) and self.fetching:
            # two origin fetches of one blob would double the registry's bytes
            self.fetching = False
            out.append(StopOriginFetch(view.fetcher))
        now = self.clock()
        for parent in view.parents:
            if len(self.parents) >= self.rules.max_parents:
                break
            pid = parent.peer_id
            if pid in self.parents or pid in self.banned or pid == self.peer_id:
                continue
            if self.avoided.get(pid, 0.0) > now:
                self.banned.add(pid)
                continue
            self.parents[pid] = _Parent(parent, [False] * self.count)
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

    def _on_prefix(self, contiguous: int) -> None:
        self.contiguous = max(self.contiguous, min(contiguous, self.size))
        done = self.geometry.pieces_within(self.contiguous)
        for i in [i for i in self.missing if i < done]:
            self.missing.discard(i)

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
        if p is not None:
            for i, bit in enumerate(p.have):
                if bit:
                    self.availability[i] -= 1
            for i in list(p.in_flight):
                self._release_from(i, peer)
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
        out.append(AskFallback(give_up.reason))

    def _on_fallback(self, event: FallbackAnswer, out: list[Action]) -> None:
        if self.asking is None:
            return
        if event.granted:
            self._finish(GiveUp(self.asking), out)
            return
        # refused: the registry is serving others; wait in the swarm for another while
        self.asking = None
        self._last_progress = self.clock()

    def _finish(self, action: GiveUp | Complete, out: list[Action]) -> None:
        self.finished = True
        out.append(action)

    def _plan(self, out: list[Action], only: str | None = None) -> None:
        """Fill every parent's free lanes (parents in the order they came), or ``only``'s."""
        if (len(self.awaiting_hash) + len(self.in_flight)) * self.piece_size >= max(
            self.rules.max_unverified, 2 * self.piece_size
        ) and self.awaiting_hash:
            return  # the hashes are late: what arrives would only wait in memory
        read_piece = self.contiguous // self.piece_size
        requestable = self._requestable() - self.in_flight.keys()
        for pid, p in self.parents.items():
            if only is not None and pid != only:
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
        for _, index in oldest:
            holder = self.in_flight.get(index)
            if len(self.in_flight) + len(self.extra) >= self.rules.max_requests:
                return
            for pid, p in self.parents.items():
                if pid != holder and p.have[index] and len(p.in_flight) < self.rules.lanes_per_parent:
                    self.extra[index] = pid
                    p.in_flight.add(index)
                    out.append(RequestPiece(pid, index))
                    break

    def _requestable(self) -> set[int]:
        return self.missing - self.writing - self.awaiting_hash.keys()
