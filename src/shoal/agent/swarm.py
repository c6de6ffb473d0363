"""Get a blob from the swarm: join its task, take verified pieces from parents, or fetch from
the origin when the scheduler makes this agent the blob's origin fetcher.

Whatever goes wrong in the swarm (no scheduler, no parents, a stalled lease, bad peers) ends
in the same place: the rest of the blob comes from the origin, from where the swarm left
off. A pull through Shoal never fails where a direct pull would succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp

from shoal.agent.metrics import AgentMetrics
from shoal.agent.origin import OriginSource
from shoal.agent.piece_client import PieceClient, PieceTransferError
from shoal.agent.upstreams import Upstreams
from shoal.core.digest import Digest
from shoal.oci.auth import Credentials
from shoal.oci.client import UpstreamError
from shoal.oci.distribution import DistributionPath
from shoal.p2p.pieces import choose_piece_size, piece_count, piece_span
from shoal.p2p.policy.piece_selection import next_piece
from shoal.p2p.protocol import (
    JoinRequest,
    PeerInfo,
    PeerStatus,
    Report,
    TaskView,
    bearer,
    decode_bitfield,
    encode_bitfield,
    from_json,
)
from shoal.p2p.ratelimit import TokenBucket
from shoal.p2p.scheduler_client import SchedulerClient, SchedulerUnavailable
from shoal.store.blobstore import BlobStore, StoreError, StoreFullError, is_disk_full
from shoal.store.partial import PartialBlob

log = logging.getLogger(__name__)

JOIN_RETRY_PAUSES = (0.5, 1.0, 2.0)
"""pauses between join attempts: four attempts in all"""
SCHEDULER_FAILURES = 3
"""reports failed in a row after which a download that also stopped moving gives up on the
swarm; while pieces keep coming from parents it carries on without the scheduler"""
SCHEDULER_LOST_GRACE = 10.0
"""seconds without progress that, with the scheduler failing, end the swarm download (a
rollout's start can keep a scheduler on shared cores from answering for a few seconds)"""


@dataclass(frozen=True, slots=True)
class SwarmConfig:
    peer_id: str
    address: str
    token: str | None
    report_interval: float = 0.5
    settled_report_interval: float = 2.0
    """how often a child that already has ``max_parents`` parents reports: the scheduler only
    learns its piece count from it, and at 0.5 s a 20-node rollout of 4 layers was 160
    reports a second, enough to slow a scheduler sharing two cores until leases expired"""
    stall_timeout: float = 25.0
    """seconds without progress (and no origin fetch of our own) before going to the origin;
    longer than the scheduler's lease TTL (15 s), so that a dead fetcher's successor can take
    over before every child goes to the registry on its own"""
    max_parents: int = 6
    lanes_per_parent: int = 2
    piece_timeout: float = 30.0
    connect_timeout: float = 10.0
    """a parent whose CPU is busy serving others can take seconds to accept a connection"""
    status_wait: float = 5.0
    seed_announce_interval: float = 10.0
    max_seeding: int = 512
    avoid_corrupt_for: float = 600.0
    """seconds a peer that sent a corrupt piece is avoided for every blob"""


def piece_hashes(path: Path, size: int, piece_size: int) -> dict[int, str]:
    """sha256 of every piece of a complete file (run in a thread)."""
    out: dict[int, str] = {}
    with path.open("rb") as fobj:
        for index in range(piece_count(size, piece_size)):
            out[index] = hashlib.sha256(fobj.read(piece_size)).hexdigest()
    return out


PARENT_ERRORS = 3
"""failed piece requests in a row after which a parent is dropped for this blob"""


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
        session: aiohttp.ClientSession,
        bucket: TokenBucket,
        metrics: AgentMetrics,
    ) -> None:
        self.config = config
        self.origin = origin
        self.scheduler = scheduler
        self.upstreams = upstreams
        self.store = store
        self.session = session
        self.bucket = bucket
        self.metrics = metrics
        self.seeding: OrderedDict[Digest, int] = OrderedDict()
        self.suppliers: dict[Digest, tuple[int, set[str]]] = {}
        """blob -> (size, peers whose pieces or piece hashes it was made of), until it is verified"""
        self.avoid: dict[str, float] = {}
        """peer id -> monotonic time until which it is not used, after it sent corrupt data"""
        self._announcer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.pieces = PieceClient(
            config.token, connect_timeout=config.connect_timeout, read_timeout=config.piece_timeout
        )

    def start(self) -> None:
        self._announcer = asyncio.create_task(self._announce_seeds(), name="seed announcer")

    async def close(self) -> None:
        if self._announcer is not None:
            self._announcer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._announcer
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self.pieces.close()

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
            raise
        except Exception as exc:  # a bug in the swarm must not fail the pull
            log.exception("swarm download of %s crashed", dist.digest)
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
        await self.origin.fill(partial, dist, creds)

    def rejected(self, digest: Digest) -> bool:
        """Verified pieces made a blob that does not match its digest: the piece hashes were
        wrong, so the lease holder that published them (or a parent) lied. Avoid them all,
        report them to the scheduler, and have the blob fetched again from the origin. A blob
        that came from our own origin fetch alone is the registry's fault: no refetch."""
        size, peers = self.suppliers.pop(digest, (0, set()))
        peers.discard(self.config.peer_id)
        if not peers:
            return False
        until = time.monotonic() + self.config.avoid_corrupt_for
        for peer in peers:
            self.avoid[peer] = until
        log.error("blob %s from the swarm does not match its digest; avoiding %s", digest, ", ".join(sorted(peers)))
        piece_size = choose_piece_size(size)
        report = Report(
            self.config.peer_id,
            self.config.address,
            pieces=0,
            contiguous=0,
            failed_parents=sorted(peers),
            size=size,
            piece_size=piece_size,
            bad_hashes=True,
        )
        task = asyncio.create_task(self._report_quietly(str(digest), report), name=f"report liars of {digest}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return True

    async def _report_quietly(self, digest: str, report: Report) -> None:
        with contextlib.suppress(SchedulerUnavailable):
            await self.scheduler.report(digest, report)

    async def cached(self, digest: Digest, size: int) -> None:
        """The blob is complete and verified: tell the scheduler, and keep saying so."""
        self.suppliers.pop(digest, None)
        self.seeding[digest] = size
        self.seeding.move_to_end(digest)
        while len(self.seeding) > self.config.max_seeding:
            self.seeding.popitem(last=False)
        await self._announce(digest, size)

    async def _announce(self, digest: Digest, size: int) -> None:
        piece_size = choose_piece_size(size)
        pieces = piece_count(size, piece_size)
        report = Report(
            self.config.peer_id,
            self.config.address,
            pieces=pieces,
            contiguous=size,
            complete=True,
            size=size,
            piece_size=piece_size,
        )
        with contextlib.suppress(SchedulerUnavailable):
            view = await self.scheduler.report(str(digest), report)
            if view.hashes_known < pieces:
                # a scheduler that came up after the download (a restart, a failover) has no
                # piece hashes: ours are checked against the blob's digest, publish them
                path = self.store.blob_path(digest)
                if path is not None:
                    hashes = await asyncio.to_thread(piece_hashes, path, size, piece_size)
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


class ParentLink:
    """What we know of one parent for one blob: its pieces, and the lanes asking it for them."""

    def __init__(self, info: PeerInfo, count: int) -> None:
        self.info = info
        self.have = [False] * count
        self.updated = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.failed: str | None = None
        self.received = 0
        """pieces taken from this parent"""
        self.errors = 0
        """failed requests in a row"""


class SwarmDownload:
    """One blob's download through the swarm (single use)."""

    def __init__(
        self, source: SwarmSource, partial: PartialBlob, dist: DistributionPath, creds: Credentials | None
    ) -> None:
        assert partial.size is not None
        assert dist.digest is not None
        self.s = source
        self.cfg = source.config
        self.partial = partial
        self.dist = dist
        self.creds = creds
        self.digest = dist.digest
        self.size = partial.size
        self.piece_size = choose_piece_size(self.size)
        self.count = piece_count(self.size, self.piece_size)
        self.missing = set(range(self.count))
        self.in_flight: set[int] = set()
        self.availability = [0] * self.count
        self.hashes: dict[int, str] = {}
        self.hashes_changed = asyncio.Event()
        self.links: dict[str, ParentLink] = {}
        self.banned: set[str] = set()
        self.unreported_failures: set[str] = set()
        self.hashes_sent: set[int] = set()
        self.salt = f"{self.cfg.peer_id}/{self.digest}"
        self.from_parents: dict[str, int] = {}
        self.bytes_received = 0
        self.started = time.monotonic()
        self.fetching: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        self.sched_failures = 0
        self.tasks: list[asyncio.Task[None]] = []
        self.wake = asyncio.Event()
        self.suppliers: set[str] = set()
        """peers whose pieces we took, and the lease holders whose piece hashes we checked them by"""

    # -- supervisor --------------------------------------------------------------------------
    async def run(self) -> None:
        view = await self._join()
        try:
            self._apply(view)
            self._spawn(self._report_loop(), "reports")
            self._spawn(self._hash_loop(), "hashes")
            await self._supervise()
        finally:
            await self._stop_all()
        log.info(
            "swarm %s: %d pieces in %.2fs, %s; from parents: %s",
            self.digest,
            self.count,
            time.monotonic() - self.started,
            "origin fetcher" if self.fetching is not None else "no origin fetch",
            ", ".join(f"{a}={n}" for a, n in sorted(self.from_parents.items())) or "none",
        )
        if self.fetching is not None:
            # publish the last pieces' hashes: the reporter may not have sent them yet
            with contextlib.suppress(SchedulerUnavailable):
                await self._report_once()

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

    async def _supervise(self) -> None:
        last_progress, last_state = time.monotonic(), self._progress()
        while self.partial.contiguous < self.size:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.partial.changed().wait(), 1.0)
            if self.error is not None:
                raise self.error
            now, state = time.monotonic(), self._progress()
            if state != last_state:
                last_progress, last_state = now, state
            if self.fetching is not None:
                continue
            if self.sched_failures >= SCHEDULER_FAILURES and now - last_progress > SCHEDULER_LOST_GRACE:
                # the scheduler is gone and the swarm is not moving without it either
                raise SwarmGaveUpError("scheduler: lost")
            if now - last_progress > self.cfg.stall_timeout:
                raise SwarmGaveUpError(f"stalled: no progress for {self.cfg.stall_timeout:.0f}s")

    def _progress(self) -> tuple[int, int, int, int]:
        """Anything that moved: the verified prefix, pieces held, bytes still arriving from
        parents (a loaded swarm can take seconds per piece; that is slow, not stalled), or the
        swarm itself: new piece hashes mean the origin fetcher is getting further, and a child
        that holds every piece its parents have is waiting for the fetch, not stuck. Going to
        the origin then would only add a second copy of bytes the swarm is about to have."""
        return self.partial.contiguous, len(self.missing), self.bytes_received, len(self.hashes)

    def _prune(self) -> None:
        """Forget pieces that arrived by another way (the origin fetch writes in order)."""
        done = self.partial.contiguous // self.piece_size
        if self.partial.contiguous == self.size:
            done = self.count
        for index in [i for i in self.missing if i < done]:
            self.missing.discard(index)

    def _held(self) -> int:
        self._prune()
        return self.count - len(self.missing)

    def _spawn(self, coro: object, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=f"{name} {self.digest}")  # type: ignore[arg-type]
        self.tasks.append(task)
        return task

    async def _stop_all(self) -> None:
        tasks = list(self.tasks)
        for link in self.links.values():
            tasks.extend(link.tasks)
        if self.fetching is not None:
            tasks.append(self.fetching)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.s.metrics.parents.dec(len(self.links))
        self.links.clear()

    def _apply(self, view: TaskView) -> None:
        if view.fetcher is not None and view.hashes_known:
            self.suppliers.add(view.fetcher)
        if view.role == "fetcher" and self.fetching is None:
            self.s.metrics.lease_acquired.inc()
            log.info("origin fetcher for %s", self.digest)
            self.fetching = self._spawn(self._fetch_origin(), "origin fetch")
        elif view.role != "fetcher" and self.fetching is not None and view.fetcher not in (None, self.cfg.peer_id):
            # the scheduler gave the lease to another peer (ours looked dead or stalled to it):
            # two origin fetches of one blob would double the registry's bytes, so stop ours
            # and take the rest from the swarm like any child
            log.warning(
                "origin lease of %s went to %s: stopping our origin fetch at %d bytes",
                self.digest,
                view.fetcher,
                self.partial.contiguous,
            )
            self.fetching.cancel()
            self.fetching = None
        for parent in view.parents:
            if len(self.links) >= self.cfg.max_parents:
                break
            if parent.peer_id in self.links or parent.peer_id in self.banned or parent.peer_id == self.cfg.peer_id:
                continue
            if self.s.avoid.get(parent.peer_id, 0.0) > time.monotonic():
                self.banned.add(parent.peer_id)
                continue
            link = ParentLink(parent, self.count)
            self.links[parent.peer_id] = link
            self.s.metrics.parents.inc()
            link.tasks.append(asyncio.create_task(self._watch_parent(link)))
            for _ in range(self.cfg.lanes_per_parent):
                link.tasks.append(asyncio.create_task(self._lane(link)))

    def _drop(self, link: ParentLink, reason: str) -> None:
        if link.failed is not None:
            return
        link.failed = reason
        log.warning("dropping parent %s for %s: %s", link.info.address, self.digest, reason)
        self.banned.add(link.info.peer_id)
        self.unreported_failures.add(link.info.peer_id)
        if self.links.pop(link.info.peer_id, None) is not None:
            self.s.metrics.parents.dec()
        for i, bit in enumerate(link.have):
            if bit:
                self.availability[i] -= 1
        current = asyncio.current_task()
        for task in link.tasks:
            if task is not current:
                task.cancel()

    # -- origin ------------------------------------------------------------------------------
    async def _fetch_origin(self) -> None:
        try:
            if self.partial.contiguous % self.piece_size == 0 and not self.partial.piece_size:
                self.partial.set_piece_size(self.piece_size)
            await self.s.origin.fill(self.partial, self.dist, self.creds)
            self._prune()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.error = exc
            self.partial.changed().set()

    # -- scheduler ---------------------------------------------------------------------------
    async def _report_loop(self) -> None:
        last = time.monotonic()  # the join was a report
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.partial.changed().wait(), self.cfg.report_interval)
            fresh = len(self.partial.piece_hashes) > len(self.hashes_sent)
            if self.fetching is not None and not fresh and time.monotonic() - last < self.cfg.report_interval:
                continue  # the fetcher wrote inside a piece: nothing new to publish yet
            last = time.monotonic()
            try:
                view = await self._report_once()
            except SchedulerUnavailable as exc:
                self.sched_failures += 1
                log.warning("report for %s failed (%d): %s", self.digest, self.sched_failures, exc)
                await asyncio.sleep(self.cfg.report_interval)
                continue
            self.sched_failures = 0
            self._apply(view)
            # the fetcher reports as soon as a piece is hashed (children wait for its hash), and
            # on the interval otherwise; others on the interval
            await asyncio.sleep(self._report_pause())

    def _report_pause(self) -> float:
        if self.fetching is not None:
            return 0.05
        if len(self.links) < self.cfg.max_parents:
            return self.cfg.report_interval  # still looking for parents: reports bring them
        return self.cfg.settled_report_interval

    async def _report_once(self) -> TaskView:
        # dict() copies in one step: the write thread adds hashes while we look
        new = {i: h for i, h in dict(self.partial.piece_hashes).items() if i not in self.hashes_sent}
        failed = sorted(self.unreported_failures)
        report = Report(
            self.cfg.peer_id,
            self.cfg.address,
            pieces=self._held(),
            contiguous=self.partial.contiguous,
            hashes=new,
            failed_parents=failed,
            size=self.size,
            piece_size=self.piece_size,
        )
        view = await self.s.scheduler.report(str(self.digest), report)
        self.hashes_sent.update(new)
        self.unreported_failures.difference_update(failed)
        return view

    async def _hash_loop(self) -> None:
        while len(self.hashes) < self.count:
            start = 0
            while start in self.hashes:
                start += 1
            try:
                view = await self.s.scheduler.hashes(str(self.digest), start, self.cfg.status_wait)
            except SchedulerUnavailable:
                await asyncio.sleep(self.cfg.report_interval)
                continue
            for offset, value in enumerate(view.hashes):
                self.hashes[view.start + offset] = value
            if view.hashes:
                self.hashes_changed.set()
                self.hashes_changed = asyncio.Event()

    async def _hash_of(self, index: int) -> str:
        deadline = time.monotonic() + self.cfg.stall_timeout
        while index not in self.hashes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no hash for piece {index}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.hashes_changed.wait(), remaining)
        return self.hashes[index]

    # -- parents -----------------------------------------------------------------------------
    def _path(self, tail: str) -> str:
        return f"/p2p/v1/blobs/{self.digest}/{tail}"

    def _url(self, link: ParentLink, tail: str) -> str:
        return f"http://{link.info.address}{self._path(tail)}"

    async def _watch_parent(self, link: ParentLink) -> None:
        """Long-poll the parent's piece map; lanes wait on ``link.updated``."""
        timeout = aiohttp.ClientTimeout(total=self.cfg.status_wait + 5, connect=self.cfg.connect_timeout)
        errors = 0
        while link.failed is None:
            # ask only about pieces we still need: the parent answers when it holds more of them
            want = [i in self.missing and i not in self.in_flight for i in range(self.count)]
            known = sum(1 for h, w in zip(link.have, want, strict=True) if h and w)
            try:
                async with self.s.session.get(
                    self._url(link, "status"),
                    params={
                        "have": str(known),
                        "want": encode_bitfield(want),
                        "wait": str(self.cfg.status_wait),
                    },
                    headers=bearer(self.cfg.token),
                    timeout=timeout,
                ) as resp:
                    if resp.status == 404:
                        await asyncio.sleep(0.5)  # it has not started this blob yet
                        continue
                    if resp.status != 200:
                        raise ValueError(f"status answered {resp.status}")
                    status: PeerStatus = from_json(PeerStatus, await resp.json())
                bits = decode_bitfield(status.bitfield, self.count)
                if status.size != self.size:
                    raise ValueError(f"parent says the blob has {status.size} bytes, not {self.size}")
                errors = 0
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                errors += 1
                if errors >= 3:
                    self._drop(link, f"status failed: {exc!r}")
                    return
                await asyncio.sleep(0.2 * errors)
                continue
            for i, bit in enumerate(bits):
                if bit and not link.have[i]:
                    self.availability[i] += 1
            link.have = bits
            link.updated.set()
            link.updated = asyncio.Event()
            if status.complete:
                return

    async def _lane(self, link: ParentLink) -> None:
        while link.failed is None and self.missing:
            self._prune()
            index = next_piece(
                parent_has=link.have,
                missing=self.missing,
                in_flight=self.in_flight,
                availability=self.availability,
                read_piece=self.partial.contiguous // self.piece_size,
                salt=self.salt,
            )
            if index is None:
                await link.updated.wait()
                continue
            self.in_flight.add(index)
            try:
                await self._fetch_piece(link, index)
            finally:
                self.in_flight.discard(index)
                if index in self.missing:  # not fetched: lanes of other parents may take it
                    self._wake_lanes()

    def _count_bytes(self, n: int) -> None:
        """Progress from the piece client's worker threads (a plain counter: a lost update
        under a race only makes progress look a little slower)."""
        self.bytes_received += n

    def _wake_lanes(self) -> None:
        for other in self.links.values():
            other.updated.set()
            other.updated = asyncio.Event()

    async def _fetch_piece(self, link: ParentLink, index: int) -> None:
        offset, length = piece_span(index, self.size, self.piece_size)
        await self.s.bucket.consume(length)
        try:
            reply = await self.s.pieces.fetch(
                link.info.address,
                self._path(f"pieces/{index}"),
                length,
                timeout=self.cfg.piece_timeout,
                progress=self._count_bytes,
            )
        except (PieceTransferError, TimeoutError) as exc:
            # a busy parent is slow to accept or answer: back off, drop it only if it keeps failing
            link.errors += 1
            if link.errors >= PARENT_ERRORS:
                self._drop(link, f"piece {index} failed {link.errors} times in a row: {exc!r}")
            else:
                await asyncio.sleep(0.5 * link.errors)
            return
        if reply.status in (404, 503):
            if reply.status == 404:
                link.have[index] = False
            await asyncio.sleep(0.05)
            return
        if reply.status != 200 or reply.data is None:
            self._drop(link, f"piece answered {reply.status}")
            return
        link.errors = 0
        data = reply.data
        try:
            expected = await self._hash_of(index)
        except TimeoutError:
            return  # no hash to check it against (yet): drop the data, the stall logic decides
        if reply.sha256 != expected:
            self.s.metrics.digest_mismatches.labels("peer").inc()
            self.s.avoid[link.info.peer_id] = time.monotonic() + self.cfg.avoid_corrupt_for
            self._drop(link, f"piece {index} is corrupt")
            return
        if index not in self.missing:
            return
        try:
            await self.partial.write(offset, data)
        except OSError as exc:
            self.error = StoreFullError(str(exc)) if is_disk_full(exc) else StoreError(str(exc))
            self.partial.changed().set()
            return
        self.missing.discard(index)
        self.suppliers.add(link.info.peer_id)
        link.received += 1
        self.from_parents[link.info.address] = link.received
        self.s.metrics.peer_bytes.labels("download").inc(length)
        self.s.metrics.pieces_received.inc()
