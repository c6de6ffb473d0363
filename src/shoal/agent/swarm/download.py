"""One blob's download through the swarm: the task that owns its :class:`DownloadState`.

It reads events from a queue (a parent's pieces, a piece received and hashed by a link's
reader thread, a scheduler answer, a write done, a tick, a report falling due), applies them
to the pure state and carries out the actions it returns. Every rule lives in the state;
this module is the I/O, and knows the rest of the agent only through the narrow interfaces
of :mod:`shoal.agent.swarm.ports`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from shoal.agent.metrics import AgentMetrics
from shoal.agent.peer_link import LinkError, PieceBody
from shoal.agent.swarm.config import SwarmConfig
from shoal.agent.swarm.fetches import NodeFetches
from shoal.agent.swarm.ports import AvoidList, OriginFill, PeerPort, SchedulerPort
from shoal.oci.auth import Credentials
from shoal.oci.distribution import DistributionPath
from shoal.p2p import download_state as ds
from shoal.p2p.download_state.scheduler_messages import answer_event, report_message
from shoal.p2p.pieces import PieceGeometry
from shoal.p2p.protocol import JoinRequest, Report, TaskView
from shoal.p2p.ratelimit import TokenBucket
from shoal.p2p.scheduler_client import SchedulerRejected, SchedulerUnavailable
from shoal.store.blobstore import StoreError, StoreFullError, is_disk_full
from shoal.store.partial import PartialBlob

log = logging.getLogger(__name__)

JOIN_PATIENCE = 30.0
"""seconds a download keeps asking for a scheduler to join before its blob goes to the origin
(docs/agent.md, "No scheduler"): enough to outlast a scheduler restart or a rollout's burst
of joins, short enough that a pull through a node without a scheduler stays usable"""
JOIN_ATTEMPTS = 4
"""joins asked at least, however long each took: a scheduler that is slow rather than gone
(each join timing out after the call's 15 s bound) is asked as often as a quick no"""
JOIN_FIRST_PAUSE = 0.5
JOIN_LONGEST_PAUSE = 8.0
TICK = 1.0
"""seconds between the owner's clock ticks (stall, piece-timeout and hash-wait rules)"""


def join_pause(failures: int, waited: float, draw: float) -> float | None:
    """The pause before the next join after ``failures`` failed ones, ``waited`` seconds after
    the first began; None: ask no more, the origin serves the blob. The pauses double from
    :data:`JOIN_FIRST_PAUSE` to :data:`JOIN_LONGEST_PAUSE`, each drawn from its upper half
    (``draw`` in [0, 1)): a fleet that failed together does not ask again together. The
    asking stops after :data:`JOIN_PATIENCE` and at least :data:`JOIN_ATTEMPTS` joins."""
    if waited >= JOIN_PATIENCE and failures >= JOIN_ATTEMPTS:
        return None
    step: float = min(JOIN_LONGEST_PAUSE, JOIN_FIRST_PAUSE * 2.0 ** max(0, failures - 1))
    pause = step * (0.5 + draw / 2)
    return pause if waited >= JOIN_PATIENCE else min(pause, JOIN_PATIENCE - waited)


class SwarmGaveUpError(Exception):
    """The swarm cannot finish this blob; the origin will."""


class _Wake:
    """Nothing happened but time: let the stall rules look, or re-raise a stored error."""


class SwarmDownload:
    """One blob's download through the swarm (single use).

    Parameters:
        config: the agent's swarm settings (identity, rules, timeouts).
        partial: the blob's file being written; its size is known.
        dist, creds: what the client asked for, and with which credentials (origin fetches).
        geometry: how the blob is cut (``PieceGeometry.of(partial.size)``).
        scheduler, peers, origin: the narrow interfaces of :mod:`shoal.agent.swarm.ports`.
        bucket: the agent's rate limit (requests wait for its tokens).
        avoid: peers that sent corrupt data (read by the state, added to on a drop).
        metrics: the agent's counters.
        clock: monotonic seconds (the state's clock too).
        fetches: the node's downloads that fetch from the origin (shared by its downloads;
            None: this one hears of no other).
    """

    def __init__(
        self,
        *,
        config: SwarmConfig,
        partial: PartialBlob,
        dist: DistributionPath,
        creds: Credentials | None,
        geometry: PieceGeometry,
        scheduler: SchedulerPort,
        peers: PeerPort,
        origin: OriginFill,
        bucket: TokenBucket,
        avoid: AvoidList,
        metrics: AgentMetrics,
        clock: Callable[[], float] = time.monotonic,
        fetches: NodeFetches | None = None,
    ) -> None:
        assert dist.digest is not None
        if partial.size != geometry.size:
            raise ValueError(f"blob {dist.digest}: geometry of {geometry.size} bytes for a blob of {partial.size}")
        self.cfg = config
        self.partial = partial
        self.dist = dist
        self.creds = creds
        self.digest = dist.digest
        self.geometry = geometry
        self.scheduler = scheduler
        self.peers = peers
        self.origin = origin
        self.bucket = bucket
        self.avoid = avoid
        self.metrics = metrics
        self.clock = clock
        self.fetches = fetches if fetches is not None else NodeFetches()
        self.state = ds.DownloadState(
            peer_id=config.peer_id,
            geometry=geometry,
            rules=config.rules,
            clock=clock,
            avoided=avoid.until,
            salt=f"{config.peer_id}/{self.digest}",
        )
        self.events: asyncio.Queue[ds.Event | _Wake] = asyncio.Queue()
        self.bodies: dict[tuple[str, int], PieceBody] = {}
        """pieces received and hashed, waiting for the state's word (write or discard)"""
        self._hash_wanted = asyncio.Event()
        """set while a received piece waits for its hash, or when the lease moved away from
        us: the hash loop asks at once"""
        self.tasks: set[asyncio.Task[None]] = set()
        self.fetching: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        self._wake: asyncio.TimerHandle | None = None
        self._wake_at: float | None = None
        self._final: ds.SendReport | None = None
        self.from_parents: dict[str, int] = {}
        self._prefix_told = -1
        """the verified prefix the state was last told of (each telling is a planning pass)"""
        self.started = clock()

    @property
    def suppliers(self) -> set[str]:
        """The lease holders whose piece hashes our pieces were checked by."""
        return self.state.suppliers

    @property
    def fallback_granted(self) -> bool:
        """The scheduler gave us a fallback lease (not: the scheduler could not be asked)."""
        return self.state.fallback_lease

    @property
    def size(self) -> int:
        """The blob's size: the hub holds each parent's PIECE to the length of the piece asked for."""
        return self.geometry.size

    # -- the hub's calls (PieceSink) ------------------------------------------------------
    def parent_has(self, peer_id: str, pieces: Iterable[int]) -> None:
        self.events.put_nowait(ds.ParentHas(peer_id, frozenset(pieces)))

    def piece_arrived(self, peer_id: str, body: PieceBody) -> None:
        if (peer_id, body.index) in self.bodies:
            body.release()
            return  # a second copy from the same parent while the first awaits its hash
        self.bodies[(peer_id, body.index)] = body
        self.events.put_nowait(ds.PieceArrived(peer_id, body.index, body.sha256))

    def piece_rejected(self, peer_id: str, index: int) -> None:
        self.events.put_nowait(ds.PieceRejected(peer_id, index))

    def parent_lost(self, peer_id: str, reason: str) -> None:
        self.events.put_nowait(ds.ParentLost(peer_id, reason))

    # -- the owner ---------------------------------------------------------------------------
    async def run(self) -> None:
        view = await self._join()
        self.peers.register(self.digest, self)
        self.fetches.join(self, self.events.put_nowait)
        try:
            self._apply(answer_event(view))
            self._spawn(self._hash_loop(), "hashes")
            self._spawn(self._tick_loop(), "ticks")
            self._spawn(self._prefix_loop(), "prefix")
            while not self.state.finished:
                self._schedule_wake()
                event = await self.events.get()
                self._apply(event)
                while not self.state.finished and not self.events.empty():
                    self._apply(self.events.get_nowait())
        finally:
            if self._wake is not None:
                self._wake.cancel()
            await self._stop_all()
        log.info(
            "swarm %s: %d pieces in %.2fs, %s; from parents: %s",
            self.digest,
            self.geometry.count,
            self.clock() - self.started,
            "origin fetcher" if self.state.fetching else "no origin fetch",
            ", ".join(f"{a}={n}" for a, n in sorted(self.from_parents.items())) or "none",
        )
        if self._final is not None:
            # the last pieces' hashes of our origin fetch: children wait for them
            with contextlib.suppress(SchedulerUnavailable):
                await self.scheduler.report(str(self.digest), self._report(self._final))

    def _apply(self, event: ds.Event | _Wake) -> None:
        if self.error is not None:
            raise self.error
        if isinstance(event, _Wake):
            event = ds.Tick()
        for action in self.state.apply(event):
            self._do(action)
        if self.state.awaiting_hash:
            self._hash_wanted.set()

    def _do(self, action: ds.Action) -> None:
        match action:
            case ds.AddParent(parent):
                self.metrics.parents.inc()
                self._spawn(self._add_parent(parent), f"parent {parent.address}")
            case ds.RequestPiece(peer_id, index):
                self._request(peer_id, index)
            case ds.CancelRequest(peer_id, index):
                self.peers.cancel(peer_id, self.digest, index)
            case ds.WritePiece(index, peer_id):
                self._write(peer_id, index)
            case ds.DiscardPiece(index, reason, peer_id, corrupt):
                if (dropped := self.bodies.pop((peer_id, index), None)) is not None:
                    dropped.release()
                if corrupt:
                    self.metrics.digest_mismatches.labels("peer").inc()
                    log.warning("piece %d of %s from %s: %s", index, self.digest, peer_id, reason)
            case ds.DropParent(peer_id, reason, avoid_until):
                self.metrics.parents.dec()
                self.peers.forget_parent(peer_id, self.digest)
                if avoid_until is not None:
                    self.avoid.avoid(peer_id, avoid_until)
                level = logging.INFO if reason == ds.MOVED else logging.WARNING
                log.log(level, "dropping parent %s for %s: %s", peer_id, self.digest, reason)
            case ds.AnnouncePieces(indices):
                self.peers.announce(self.digest, indices)
            case ds.SendReport() if action.final:
                self._final = action
            case ds.SendReport():
                self._spawn(self._send_report(action), "report")
            case ds.StartOriginFetch():
                self.metrics.lease_acquired.inc()
                log.info("origin fetcher for %s", self.digest)
                self.fetching = self._spawn(self._fetch_origin(), "origin fetch")
                self.fetches.started(self)
                self.fetching.add_done_callback(self._fetch_ended)
                self.peers.superseed(self.digest)
            case ds.StopOriginFetch(holder):
                # two origin fetches of one blob would double the registry's bytes
                log.warning(
                    "origin lease of %s went to %s: stopping our origin fetch at %d bytes",
                    self.digest,
                    holder,
                    self.partial.contiguous,
                )
                if self.fetching is not None:
                    self.fetching.cancel()
                    self.fetching = None
                self.fetches.ended(self)
                self.peers.stop_superseeding(self.digest)
                # the hash loop only waits while we fetch: the new holder's hashes are wanted now
                self._hash_wanted.set()
            case ds.AskFallback(reason):
                log.warning("swarm download of %s stuck (%s): asking for a fallback lease", self.digest, reason)
            case ds.GiveUp(reason):
                raise SwarmGaveUpError(reason)
            case ds.Complete():
                pass

    def _fetch_ended(self, task: asyncio.Task[None]) -> None:
        if self.fetching is task or self.fetching is None:
            self.fetches.ended(self)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"{name} {self.digest}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _schedule_wake(self) -> None:
        """Have ``ReportDue`` applied when the state asks for it."""
        at = self.state.wake_at()
        if at == self._wake_at:
            return
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        self._wake_at = at
        if at is not None:
            self._wake = asyncio.get_running_loop().call_later(max(0.0, at - self.clock()), self._ring)

    def _ring(self) -> None:
        self._wake, self._wake_at = None, None
        self.events.put_nowait(ds.ReportDue())

    async def _stop_all(self) -> None:
        self.fetches.leave(self)
        self.peers.unregister(self.digest)
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.metrics.parents.dec(len(self.state.parents))
        for body in self.bodies.values():
            body.release()
        self.bodies.clear()

    def _fail(self, exc: BaseException) -> None:
        """An I/O worker's error ends the download (raised by the owner's next step)."""
        if self.error is None:
            self.error = exc
        self.events.put_nowait(_Wake())

    # -- actions -------------------------------------------------------------------------
    async def _add_parent(self, parent: ds.ParentInfo) -> None:
        try:
            await self.peers.add_parent(self.digest, self.geometry.count, parent.peer_id, parent.address)
        except (LinkError, OSError) as exc:
            self.events.put_nowait(ds.ParentLost(parent.peer_id, str(exc), unreachable=True))

    def _request(self, peer_id: str, index: int) -> None:
        delay = 0.0 if self.bucket.rate <= 0 else self.bucket.delay_for(self.geometry.length(index))
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._send_request, peer_id, index)
        else:
            self._send_request(peer_id, index)

    def _send_request(self, peer_id: str, index: int) -> None:
        if peer_id not in (self.state.in_flight.get(index), self.state.extra.get(index)):
            return  # released while the bucket held it back
        if not self.peers.request(peer_id, self.digest, index):
            self.events.put_nowait(ds.PieceFailed(peer_id, index, "no link to the parent"))

    def _write(self, peer_id: str, index: int) -> None:
        body = self.bodies.pop((peer_id, index), None)
        if body is None or body.sha256 != self.state.hashes.get(index):
            # cannot happen: the state decided on this very body's hash
            self._fail(RuntimeError(f"piece {index} from {peer_id} is not the one verified"))
            return
        self.from_parents[peer_id] = self.from_parents.get(peer_id, 0) + 1
        self._spawn(self._write_piece(index, body), f"write {index}")

    async def _write_piece(self, index: int, body: PieceBody) -> None:
        try:
            await self.partial.write(self.geometry.offset(index), body.data)
        except OSError as exc:
            body.release()  # the write's thread is done with the bytes
            self._fail(StoreFullError(str(exc)) if is_disk_full(exc) else StoreError(str(exc)))
            return
        # not released when cancelled: a teardown that cancels the write's own thread task
        # returns before that thread is done with the bytes (the collector takes them)
        body.release()
        self.metrics.pieces_received.inc()
        self._observe_partial()  # a fetcher's prefix may have grown over it (and hashed it)
        self.events.put_nowait(ds.PieceWritten(index))

    async def _fetch_origin(self) -> None:
        try:
            if self.partial.contiguous % self.geometry.piece_size == 0 and not self.partial.piece_size:
                self.partial.set_piece_size(self.geometry.piece_size)
            await self.origin.fill(self.partial, self.dist, self.creds)
            self._observe_partial()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(exc)

    def _observe_partial(self) -> None:
        """Tell the state what the partial file holds: new piece hashes of our origin fetch,
        then the verified prefix (read first: a piece's hash is stored before the prefix
        covers it)."""
        contiguous = self.partial.contiguous
        hashes = self.partial.piece_hashes
        known = self.state.reports.own_hashes
        if len(hashes) > len(known):
            # dict() copies in one step: the write thread adds hashes while we look
            self.events.put_nowait(ds.PiecesHashed({i: h for i, h in dict(hashes).items() if i not in known}))
        if contiguous != self._prefix_told:
            # a piece written and the prefix's own wake-up both look: once per new prefix
            self._prefix_told = contiguous
            self.events.put_nowait(ds.PrefixAdvanced(contiguous))

    # -- watchers ------------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        """The clock, and bytes still arriving on parents' links (slow is not stalled): each
        parent's count against its own last one, so a parent that had sent more and left
        does not hide the bytes of those still sending."""
        seen: dict[str, int] = {}
        while True:
            await asyncio.sleep(TICK)
            arrived = 0
            now: dict[str, int] = {}
            for pid in self.state.parents:
                count = now[pid] = self.peers.bytes_from(pid, self.digest)
                arrived += max(0, count - seen.get(pid, count))  # a new link starts from where it is
            seen = now
            self.events.put_nowait(ds.BytesArrived(arrived) if arrived else ds.Tick())

    async def _prefix_loop(self) -> None:
        """The verified prefix grows (our origin fetch, or pieces absorbed in order)."""
        while True:
            await self.partial.changed().wait()
            self._observe_partial()

    async def _join(self) -> TaskView:
        """Join the task. A scheduler that cannot be reached is asked again, with jittered
        backoff, for :data:`JOIN_PATIENCE` (a rollout's first seconds send it every node's
        joins at once); one that answers no (4xx) is not."""
        join = JoinRequest(self.cfg.peer_id, self.cfg.address, self.geometry.size, self.geometry.piece_size)
        started = self.clock()
        failures = 0
        while True:
            try:
                return await self.scheduler.join(str(self.digest), join)
            except SchedulerRejected as exc:
                raise SwarmGaveUpError(f"scheduler: {exc}") from None
            except SchedulerUnavailable as exc:
                failures += 1
                pause = join_pause(failures, self.clock() - started, random.random())
                if pause is None:
                    raise SwarmGaveUpError(f"scheduler: {exc}") from None
                log.warning("join for %s failed (%d, asking again in %.1fs): %s", self.digest, failures, pause, exc)
                await asyncio.sleep(pause)

    def _report(self, action: ds.SendReport) -> Report:
        return report_message(action, self.cfg.peer_id, self.cfg.address, self.geometry)

    async def _send_report(self, action: ds.SendReport) -> None:
        for event in await self._exchange(action):
            self.events.put_nowait(event)

    async def _exchange(self, action: ds.SendReport) -> list[ds.Event]:
        """Send a report; the events its answer (or its failure) makes."""
        try:
            view = await self.scheduler.report(str(self.digest), self._report(action))
        except SchedulerUnavailable as exc:
            log.warning("report for %s failed: %s", self.digest, exc)
            return [ds.SchedulerFailed()]
        except Exception:
            # the state waits for this report's answer: a bug here must not silence it for good
            log.exception("report for %s crashed", self.digest)
            return [ds.SchedulerFailed()]
        events: list[ds.Event] = [answer_event(view)]
        if action.wants_fallback:
            if not view.fallback and not self.state.finished:
                self.metrics.fallbacks_refused.inc()
                log.info("fallback lease of %s refused: waiting in the swarm", self.digest)
            events.append(ds.FallbackAnswer(granted=view.fallback))
        return events

    async def keep_fallback(self) -> None:
        """Hold the fallback lease while the origin fetch after it runs: the state asks for a
        report every ``heartbeat``."""
        while (at := self.state.wake_at()) is not None:
            await asyncio.sleep(max(0.0, at - self.clock()))
            for event in (ds.PrefixAdvanced(self.partial.contiguous), ds.ReportDue()):
                for action in self.state.apply(event):
                    if isinstance(action, ds.SendReport):
                        for answer in await self._exchange(action):
                            self.state.apply(answer)

    async def _hash_loop(self) -> None:
        """Long-poll the scheduler for the lease holder's piece hashes (it answers when there
        are new ones)."""
        known = 0
        while known < self.geometry.count:
            if self.state.fetching and not self.state.awaiting_hash:
                # our own origin fetch makes the hashes the scheduler would answer with: an
                # ask would only bring them back (about two HTTPS calls a second per fetch).
                # A piece from a parent waiting for its hash, or the lease moving, asks again
                # (both set _hash_wanted; the pause's own look at the lease is a safety net)
                await self._hashes_wanted(ds.hash_ask_pause(0))
                continue
            try:
                view = await self.scheduler.hashes(str(self.digest), known, self.cfg.status_wait)
            except SchedulerUnavailable:
                await asyncio.sleep(self.cfg.rules.report_interval)
                continue
            if view.hashes:
                self.events.put_nowait(ds.HashesKnown({view.start + i: h for i, h in enumerate(view.hashes)}))
                known = max(known, view.start + len(view.hashes))
            # the answer's hashes are queued, not applied yet: pieces below ``known`` have theirs
            pause = ds.hash_ask_pause(sum(i >= known for i in self.state.awaiting_hash))
            if known < self.geometry.count and pause > 0:
                # let hashes gather; a piece that comes in before its hash cuts this short
                await self._hashes_wanted(pause)

    async def _hashes_wanted(self, timeout: float) -> None:
        """Wait until a received piece waits for its hash (or the lease moved away from us),
        at most ``timeout`` seconds."""
        self._hash_wanted.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._hash_wanted.wait(), timeout)
