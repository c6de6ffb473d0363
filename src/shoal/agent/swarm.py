"""Get a blob from the swarm: join its task, take verified pieces from parents, or fetch from
the origin when the scheduler makes this agent the blob's origin fetcher.

Whatever goes wrong in the swarm (no scheduler, no parents, a stalled lease, bad peers) ends
in the same place: the rest of the blob comes from the origin, from where the swarm left
off. A pull through Shoal never fails where a direct pull would succeed.

One task owns each download (:class:`SwarmDownload`): it reads events from a queue (a
parent's pieces, a piece received and hashed by a link's reader thread, a scheduler answer,
a write done, a tick), applies them to the pure :class:`~shoal.p2p.download_state.DownloadState`
and carries out the actions it returns. The rules live there; this module is the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from shoal.agent.metrics import AgentMetrics
from shoal.agent.origin import OriginSource
from shoal.agent.peer_hub import PeerHub
from shoal.agent.peer_link import LinkError, PieceBody
from shoal.agent.upstreams import Upstreams
from shoal.core.digest import Digest
from shoal.oci.auth import Credentials
from shoal.oci.client import UpstreamError
from shoal.oci.distribution import DistributionPath
from shoal.p2p import download_state as ds
from shoal.p2p.pieces import PieceGeometry
from shoal.p2p.protocol import JoinRequest, Report, TaskView
from shoal.p2p.ratelimit import TokenBucket
from shoal.p2p.scheduler_client import SchedulerClient, SchedulerUnavailable
from shoal.store.blobstore import BlobStore, StoreError, StoreFullError, is_disk_full
from shoal.store.partial import PartialBlob

log = logging.getLogger(__name__)

JOIN_RETRY_PAUSES = (0.5, 1.0, 2.0)
"""pauses between join attempts: four attempts in all"""
TICK = 1.0
"""seconds between the owner's clock ticks (stall, piece-timeout and hash-wait rules)"""


@dataclass(frozen=True, slots=True)
class SwarmConfig:
    peer_id: str
    address: str
    token: str | None
    rules: ds.DownloadRules = field(default_factory=ds.DownloadRules)
    report_interval: float = 0.5
    """least seconds between two reports of a child (the fetcher reports each new piece hash)"""
    heartbeat: float = 5.0
    """seconds after which a download reports even with nothing new: keeps its membership and
    the fetcher's lease alive (the scheduler's lease lasts 15 s), and brings lease changes"""
    connect_timeout: float = 10.0
    """a parent whose CPU is busy serving others can take seconds to accept a connection"""
    status_wait: float = 5.0
    """seconds a long-poll of the scheduler for piece hashes waits"""
    seed_announce_interval: float = 10.0
    max_seeding: int = 512
    superseed_copies: int = 2


def piece_hashes(path: Path, geometry: PieceGeometry) -> dict[int, str]:
    """sha256 of every piece of a complete file (run in a thread)."""
    out: dict[int, str] = {}
    with path.open("rb") as fobj:
        for index in range(geometry.count):
            out[index] = hashlib.sha256(fobj.read(geometry.piece_size)).hexdigest()
    return out


class SwarmGaveUpError(Exception):
    """The swarm cannot finish this blob; the origin will."""


class SwarmSource:
    """The agent's BlobSource in ``p2p`` mode."""

    def __init__(
        self,
        config: SwarmConfig,
        origin: OriginSource,
        scheduler: SchedulerClient,
        upstreams: Upstreams,
        store: BlobStore,
        hub: PeerHub,
        bucket: TokenBucket,
        metrics: AgentMetrics,
    ) -> None:
        self.config = config
        self.origin = origin
        self.scheduler = scheduler
        self.upstreams = upstreams
        self.store = store
        self.hub = hub
        self.bucket = bucket
        self.metrics = metrics
        self.seeding: OrderedDict[Digest, int] = OrderedDict()
        self.suppliers: dict[Digest, tuple[int, set[str]]] = {}
        """blob -> (size, peers whose piece hashes it was checked by), until it is verified"""
        self.avoid: dict[str, float] = {}
        """peer id -> monotonic time until which it is not used, after it sent corrupt data"""
        self._announcer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._fell_back: set[Digest] = set()
        """blobs fetched from the origin under a fallback lease: their piece hashes go with the
        first report of the blob complete (the scheduler takes them from such a peer)"""

    def start(self) -> None:
        self.hub.start()
        self._announcer = asyncio.create_task(self._announce_seeds(), name="seed announcer")

    async def close(self) -> None:
        if self._announcer is not None:
            self._announcer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._announcer
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.hub.close()

    async def fill(self, partial: PartialBlob, dist: DistributionPath, creds: Credentials | None) -> None:
        if partial.size is None:
            size = await self._head_size(dist, creds)
            self.store.reserve(partial, size)
            partial.set_size(size)
        assert partial.size is not None
        download = SwarmDownload(self, partial, dist, creds)
        try:
            await download.run()
            return
        except SwarmGaveUpError as exc:
            reason = str(exc)
        except (StoreError, UpstreamError):
            raise  # the cache's trouble, or the registry's own answer: a direct pull gets it too
        except Exception as exc:
            log.exception("swarm download of %s crashed", dist.digest)  # a bug must not fail the pull
            reason = f"crash: {type(exc).__name__}"
        finally:
            # whoever gave us pieces (also before a fallback) answers for the blob's digest
            if download.suppliers:
                self.suppliers[dist.digest] = (partial.size, download.suppliers)  # type: ignore[index]
        self.metrics.swarm_fallbacks.labels(reason.split(":")[0]).inc()
        log.warning(
            "swarm gave up on %s (%s) at %d bytes: fetching the rest from the origin",
            dist.digest,
            reason,
            partial.contiguous,
        )
        if not download.fallback_granted:
            await self.origin.fill(partial, dist, creds)
            return
        self._fell_back.add(download.digest)
        # keep the fallback lease while we fetch: it lapses a lease TTL after our last report,
        # and the next stalled node would take it while we still use the registry
        keeper = asyncio.create_task(download.keep_fallback(), name=f"fallback lease {dist.digest}")
        try:
            await self.origin.fill(partial, dist, creds)
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    def rejected(self, digest: Digest) -> bool:
        """Verified pieces made a blob that does not match its digest: the piece hashes were
        wrong, so the lease holder that published them lied (or read a corrupt copy). Avoid
        it, report it (``bad_hashes``: the scheduler drops its hashes), and have the blob
        fetched again from the origin. Parents are not blamed: their pieces matched the
        hashes. A blob from our own origin fetch alone is the registry's fault: no refetch."""
        size, peers = self.suppliers.pop(digest, (0, set()))
        peers.discard(self.config.peer_id)
        if not peers:
            return False
        until = time.monotonic() + self.config.rules.avoid_corrupt_for
        for peer in peers:
            self.avoid[peer] = until
        log.error("blob %s from the swarm does not match its digest; avoiding %s", digest, ", ".join(sorted(peers)))
        report = Report(
            self.config.peer_id,
            self.config.address,
            pieces=0,
            contiguous=0,
            failed_parents=sorted(peers),
            size=size,
            piece_size=PieceGeometry.of(size).piece_size,
            bad_hashes=True,
        )
        self.background(self._report_quietly(str(digest), report), f"report liars of {digest}")
        return True

    def background(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _report_quietly(self, digest: str, report: Report) -> None:
        with contextlib.suppress(SchedulerUnavailable):
            await self.scheduler.report(digest, report)

    async def cached(self, digest: Digest, size: int) -> None:
        """The blob is complete and verified: tell its children and the scheduler, and keep
        telling the scheduler."""
        self.suppliers.pop(digest, None)
        self.hub.blob_complete(digest, size)
        self.seeding[digest] = size
        self.seeding.move_to_end(digest)
        while len(self.seeding) > self.config.max_seeding:
            self.seeding.popitem(last=False)
        await self._announce(digest, size, with_hashes=digest in self._fell_back)
        self._fell_back.discard(digest)

    async def _announce(self, digest: Digest, size: int, *, with_hashes: bool = False) -> None:
        geometry = PieceGeometry.of(size)
        pieces = geometry.count
        hashes: dict[int, str] = {}
        path = self.store.blob_path(digest) if with_hashes else None
        if path is not None:
            hashes = await asyncio.to_thread(piece_hashes, path, geometry)
        report = Report(
            self.config.peer_id,
            self.config.address,
            pieces=pieces,
            contiguous=size,
            complete=True,
            size=size,
            piece_size=geometry.piece_size,
            hashes=hashes,
        )
        with contextlib.suppress(SchedulerUnavailable):
            view = await self.scheduler.report(str(digest), report)
            if view.hashes_known < pieces and not hashes:
                # a scheduler that came up after the download (a restart, a failover) has no
                # piece hashes: ours are checked against the blob's digest, publish them
                path = self.store.blob_path(digest)
                if path is not None:
                    hashes = await asyncio.to_thread(piece_hashes, path, geometry)
                    await self.scheduler.report(str(digest), replace(report, hashes=hashes))

    async def _announce_seeds(self) -> None:
        while True:
            await asyncio.sleep(self.config.seed_announce_interval)
            for digest, size in list(self.seeding.items()):
                if self.store.blob_size(digest) is None:
                    self.seeding.pop(digest, None)
                    continue
                await self._announce(digest, size)

    async def _head_size(self, dist: DistributionPath, creds: Credentials | None) -> int:
        """The blob's size from the registry; also proves these credentials may read it."""
        size = await self.upstreams.blob_size(creds, dist)
        if size is None:
            raise StoreError(f"{dist.registry} gave no size for {dist.digest}: not using the swarm")
        return size


class _Wake:
    """Nothing happened but time: let the stall rules look, or re-raise a stored error."""


class SwarmDownload:
    """One blob's download through the swarm: the task that owns its state (single use)."""

    def __init__(
        self, source: SwarmSource, partial: PartialBlob, dist: DistributionPath, creds: Credentials | None
    ) -> None:
        assert partial.size is not None
        assert dist.digest is not None
        self.s = source
        self.cfg = source.config
        self.hub = source.hub
        self.partial = partial
        self.dist = dist
        self.creds = creds
        self.digest = dist.digest
        self.geometry = PieceGeometry.of(partial.size)
        self.size = self.geometry.size
        self.piece_size = self.geometry.piece_size
        self.count = self.geometry.count
        self.state = ds.DownloadState(
            peer_id=self.cfg.peer_id,
            geometry=self.geometry,
            rules=self.cfg.rules,
            avoided=source.avoid,
            salt=f"{self.cfg.peer_id}/{self.digest}",
        )
        self.events: asyncio.Queue[ds.Event | _Wake] = asyncio.Queue()
        self.bodies: dict[tuple[str, int], PieceBody] = {}
        """pieces received and hashed, waiting for the state's word (write or discard)"""
        self.tasks: set[asyncio.Task[None]] = set()
        self.fetching: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        self.suppliers: set[str] = set()
        """the lease holders whose piece hashes we checked pieces by: a parent whose piece
        matched its hash only relayed what the holder hashed, so a wrong blob is theirs"""
        self.announced = [False] * self.count
        """pieces told to children (HAVE)"""
        self.hashes_sent: set[int] = set()
        self.report_due = asyncio.Event()
        self.last_reported_pieces = 0
        self.written = 0
        """pieces written from parents (the origin fetch's are in the prefix)"""
        self.prefix_announced = 0
        self.fallback_granted = False
        """the scheduler gave us a fallback lease (not: the scheduler could not be asked)"""
        self.from_parents: dict[str, int] = {}
        self.started = time.monotonic()

    # -- the hub's calls (PieceSink) ------------------------------------------------------
    def parent_has(self, peer_id: str, pieces: Iterable[int]) -> None:
        self.events.put_nowait(ds.ParentHas(peer_id, frozenset(pieces)))

    def piece_arrived(self, peer_id: str, body: PieceBody) -> None:
        if (peer_id, body.index) in self.bodies:
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
        self.hub.register(self.digest, self)
        try:
            self._apply(self._answer(view))
            self._spawn(self._report_loop(), "reports")
            self._spawn(self._hash_loop(), "hashes")
            self._spawn(self._tick_loop(), "ticks")
            self._spawn(self._prefix_loop(), "prefix")
            while not self.state.finished:
                event = await self.events.get()
                self._apply(event)
                while not self.state.finished and not self.events.empty():
                    self._apply(self.events.get_nowait())
        finally:
            await self._stop_all()
        log.info(
            "swarm %s: %d pieces in %.2fs, %s; from parents: %s",
            self.digest,
            self.count,
            time.monotonic() - self.started,
            "origin fetcher" if self.state.fetching else "no origin fetch",
            ", ".join(f"{a}={n}" for a, n in sorted(self.from_parents.items())) or "none",
        )
        if self.state.fetching or self.fetching is not None:
            # publish the last pieces' hashes: the reporter may not have sent them yet
            with contextlib.suppress(SchedulerUnavailable):
                await self._report_once()

    def _apply(self, event: ds.Event | _Wake) -> None:
        if self.error is not None:
            raise self.error
        if isinstance(event, _Wake):
            event = ds.Tick()
        for action in self.state.apply(event):
            self._do(action)

    def _do(self, action: ds.Action) -> None:
        match action:
            case ds.AddParent(parent):
                self.s.metrics.parents.inc()
                self._spawn(self._add_parent(parent), f"parent {parent.address}")
            case ds.RequestPiece(peer_id, index):
                self._request(peer_id, index)
            case ds.CancelRequest(peer_id, index):
                self.hub.cancel(peer_id, self.digest, index)
            case ds.WritePiece(index, peer_id):
                self._write(peer_id, index)
            case ds.DiscardPiece(index, reason, peer_id, corrupt):
                self.bodies.pop((peer_id, index), None)
                if corrupt:
                    self.s.metrics.digest_mismatches.labels("peer").inc()
                    log.warning("piece %d of %s from %s: %s", index, self.digest, peer_id, reason)
            case ds.DropParent(peer_id, reason, avoid_until):
                self.s.metrics.parents.dec()
                self.hub.forget_parent(peer_id, self.digest)
                if avoid_until is not None:
                    self.s.avoid[peer_id] = avoid_until
                log.warning("dropping parent %s for %s: %s", peer_id, self.digest, reason)
                self.report_due.set()
            case ds.StartOriginFetch():
                self.s.metrics.lease_acquired.inc()
                log.info("origin fetcher for %s", self.digest)
                self.fetching = self._spawn(self._fetch_origin(), "origin fetch")
                self.hub.superseed(self.digest)
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
                self.hub.stop_superseeding(self.digest)
            case ds.AskFallback(reason):
                log.warning("swarm download of %s stuck (%s): asking for a fallback lease", self.digest, reason)
                self._spawn(self._ask_fallback(), "fallback ask")
            case ds.GiveUp(reason):
                raise SwarmGaveUpError(reason)
            case ds.Complete():
                pass

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"{name} {self.digest}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _stop_all(self) -> None:
        self.hub.unregister(self.digest)
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.s.metrics.parents.dec(len(self.state.parents))
        self.bodies.clear()

    def _fail(self, exc: BaseException) -> None:
        """An I/O worker's error ends the download (raised by the owner's next step)."""
        if self.error is None:
            self.error = exc
        self.events.put_nowait(_Wake())

    # -- actions -------------------------------------------------------------------------
    async def _add_parent(self, parent: ds.ParentInfo) -> None:
        try:
            await self.hub.add_parent(self.digest, self.count, parent.peer_id, parent.address)
        except (LinkError, OSError) as exc:
            self.events.put_nowait(ds.ParentLost(parent.peer_id, str(exc), unreachable=True))

    def _request(self, peer_id: str, index: int) -> None:
        length = self.geometry.length(index)
        delay = 0.0 if self.s.bucket.rate <= 0 else self.s.bucket.delay_for(length)
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._send_request, peer_id, index)
        else:
            self._send_request(peer_id, index)

    def _send_request(self, peer_id: str, index: int) -> None:
        if peer_id not in (self.state.in_flight.get(index), self.state.extra.get(index)):
            return  # released while the bucket held it back
        if not self.hub.request(peer_id, self.digest, index):
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
        offset = self.geometry.offset(index)
        try:
            await self.partial.write(offset, body.data)
        except OSError as exc:
            self._fail(StoreFullError(str(exc)) if is_disk_full(exc) else StoreError(str(exc)))
            return
        self.s.metrics.pieces_received.inc()
        self.events.put_nowait(ds.PieceWritten(index))
        self._announce([index])
        self.written += 1
        if self.written - self.last_reported_pieces >= max(1, self.count // 8):
            self.report_due.set()  # a share of the blob more: the scheduler ranks parents by it

    def _announce(self, indices: Iterable[int]) -> None:
        fresh = [i for i in indices if not self.announced[i]]
        for i in fresh:
            self.announced[i] = True
        if fresh:
            self.hub.announce(self.digest, fresh)

    async def _fetch_origin(self) -> None:
        try:
            if self.partial.contiguous % self.piece_size == 0 and not self.partial.piece_size:
                self.partial.set_piece_size(self.piece_size)
            await self.s.origin.fill(self.partial, self.dist, self.creds)
            self.events.put_nowait(ds.PrefixAdvanced(self.partial.contiguous))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(exc)

    # -- watchers ------------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        """The clock, and bytes still arriving on parents' links (slow is not stalled)."""
        seen = 0
        while True:
            await asyncio.sleep(TICK)
            arrived = sum(self.hub.bytes_from(pid, self.digest) for pid in self.state.parents)
            if arrived > seen:
                self.events.put_nowait(ds.BytesArrived(arrived - seen))
            else:
                self.events.put_nowait(ds.Tick())
            seen = max(seen, arrived)

    async def _prefix_loop(self) -> None:
        """The verified prefix grows (our origin fetch, or pieces absorbed in order): tell the
        state, announce its pieces to children, and have new piece hashes published."""
        while True:
            await self.partial.changed().wait()
            contiguous = self.partial.contiguous
            self.events.put_nowait(ds.PrefixAdvanced(contiguous))
            done = self.geometry.pieces_within(contiguous)
            if done > self.prefix_announced:
                self._announce(range(self.prefix_announced, done))
                self.prefix_announced = done
            if len(self.partial.piece_hashes) > len(self.hashes_sent):
                self.report_due.set()

    async def _join(self) -> TaskView:
        """Join the task; a scheduler that is slow to answer (a rollout's first second sends
        it every node's joins at once) is asked again before the blob goes to the origin."""
        join = JoinRequest(self.cfg.peer_id, self.cfg.address, self.size, self.piece_size)
        for attempt, pause in enumerate(JOIN_RETRY_PAUSES, start=1):
            try:
                return await self.s.scheduler.join(str(self.digest), join)
            except SchedulerUnavailable as exc:
                log.warning("join for %s failed (%d): %s", self.digest, attempt, exc)
                await asyncio.sleep(pause)
        try:
            return await self.s.scheduler.join(str(self.digest), join)
        except SchedulerUnavailable as exc:
            raise SwarmGaveUpError(f"scheduler: {exc}") from None

    def _answer(self, view: TaskView) -> ds.SchedulerAnswer:
        if view.fetcher is not None and view.hashes_known:
            self.suppliers.add(view.fetcher)
        parents = tuple(ds.ParentInfo(p.peer_id, p.address) for p in view.parents)
        return ds.SchedulerAnswer(view.fetcher, parents)

    async def _report_loop(self) -> None:
        """Report when something happened (a new piece hash of ours, a dropped parent, fewer
        parents than we could use, a share of the blob more), never more often than
        ``report_interval`` (a fetcher: each new hash at once), and at least every
        ``heartbeat`` seconds."""
        last = time.monotonic()  # the join was a report
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.report_due.wait(), self._until_due(last))
            if not self.state.fetching:
                await asyncio.sleep(max(0.0, last + self.cfg.report_interval - time.monotonic()))
            self.report_due.clear()
            last = time.monotonic()
            try:
                view = await self._report_once()
            except SchedulerUnavailable as exc:
                log.warning("report for %s failed: %s", self.digest, exc)
                self.events.put_nowait(ds.SchedulerFailed())
                await asyncio.sleep(self.cfg.report_interval)
                self.report_due.set()
                continue
            self.events.put_nowait(self._answer(view))

    def _until_due(self, last: float) -> float:
        """Seconds until the next report is due with nothing new."""
        wanting = len(self.state.parents) < self.cfg.rules.max_parents and not self.state.fetching
        pause = self.cfg.report_interval * 2 if wanting else self.cfg.heartbeat
        return max(0.0, last + pause - time.monotonic())

    async def _report_once(self, *, wants_fallback: bool = False) -> TaskView:
        # dict() copies in one step: the write thread adds hashes while we look
        new = {i: h for i, h in dict(self.partial.piece_hashes).items() if i not in self.hashes_sent}
        failed = sorted(self.state.unreported_failures)
        held = self.count - len(self.state.missing)
        report = Report(
            self.cfg.peer_id,
            self.cfg.address,
            pieces=held,
            contiguous=self.partial.contiguous,
            hashes=new,
            failed_parents=failed,
            size=self.size,
            piece_size=self.piece_size,
            wants_fallback=wants_fallback,
        )
        view = await self.s.scheduler.report(str(self.digest), report)
        self.hashes_sent.update(new)
        self.state.unreported_failures.difference_update(failed)
        self.last_reported_pieces = self.written
        return view

    async def _ask_fallback(self) -> None:
        """Ask the scheduler whether we may go to the origin; a scheduler that cannot be
        reached after a few tries is taken as a yes (nobody is left to coordinate with, and
        the pull must not fail)."""
        for pause in (*JOIN_RETRY_PAUSES, None):
            try:
                view = await self._report_once(wants_fallback=True)
            except SchedulerUnavailable as exc:
                log.warning("fallback ask for %s failed: %s", self.digest, exc)
                if pause is None:
                    self.events.put_nowait(ds.FallbackAnswer(granted=True))
                    return
                await asyncio.sleep(pause)
                continue
            self.events.put_nowait(self._answer(view))
            self.fallback_granted = view.fallback
            if not view.fallback:
                self.s.metrics.fallbacks_refused.inc()
                log.info("fallback lease of %s refused: waiting in the swarm", self.digest)
            self.events.put_nowait(ds.FallbackAnswer(granted=view.fallback))
            return

    async def keep_fallback(self) -> None:
        """Report while the origin fetch after a granted fallback runs (at ``heartbeat``)."""
        while True:
            await asyncio.sleep(self.cfg.heartbeat)
            with contextlib.suppress(SchedulerUnavailable):
                await self._report_once(wants_fallback=True)

    async def _hash_loop(self) -> None:
        """Long-poll the scheduler for the lease holder's piece hashes (it answers when there
        are new ones)."""
        known = 0
        while known < self.count:
            try:
                view = await self.s.scheduler.hashes(str(self.digest), known, self.cfg.status_wait)
            except SchedulerUnavailable:
                await asyncio.sleep(self.cfg.report_interval)
                continue
            if view.hashes:
                self.events.put_nowait(ds.HashesKnown({view.start + i: h for i, h in enumerate(view.hashes)}))
                known = max(known, view.start + len(view.hashes))
