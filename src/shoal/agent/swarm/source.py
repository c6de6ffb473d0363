"""The agent's BlobSource in ``p2p`` mode: a blob from the swarm, or from the origin.

Whatever goes wrong in the swarm (no scheduler, no parents, a stalled lease, bad peers) ends
in the same place: the rest of the blob comes from the origin, from where the swarm left
off. A pull through Shoal never fails where a direct pull would succeed.

Each blob's download is a :class:`~shoal.agent.swarm.download.SwarmDownload`; this module
makes them, runs the fallback to the origin, and carries out what the pure
:class:`~shoal.agent.swarm.seeds.SeedBook` decides beyond one download (announcements, hash
publication, blame for lying hashes).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

from shoal.agent.metrics import AgentMetrics
from shoal.agent.swarm.config import SwarmConfig
from shoal.agent.swarm.download import SwarmDownload, SwarmGaveUpError
from shoal.agent.swarm.fetches import NodeFetches
from shoal.agent.swarm.ports import AvoidList, HubPort, OriginFill, SchedulerPort, SeedStore, SizeLookup
from shoal.agent.swarm.seeds import Announcement, SeedBook
from shoal.core.digest import Digest
from shoal.oci.auth import Credentials
from shoal.oci.client import UpstreamError
from shoal.oci.distribution import DistributionPath
from shoal.p2p.pieces import PieceGeometry
from shoal.p2p.protocol import Report
from shoal.p2p.ratelimit import TokenBucket
from shoal.p2p.scheduler_client import SchedulerUnavailable
from shoal.store.blobstore import StoreError
from shoal.store.partial import PartialBlob

log = logging.getLogger(__name__)


def piece_hashes(path: Path, geometry: PieceGeometry) -> dict[int, str]:
    """sha256 of every piece of a complete file (run in a thread)."""
    out: dict[int, str] = {}
    with path.open("rb") as fobj:
        for index in range(geometry.count):
            out[index] = hashlib.sha256(fobj.read(geometry.piece_size)).hexdigest()
    return out


class SwarmSource[Hub: HubPort]:
    """The agent's BlobSource in ``p2p`` mode.

    Parameters:
        config: the swarm's settings.
        origin: the registry, for fallbacks and origin fetches.
        scheduler: the scheduler API.
        upstreams: the registry's blob sizes (and access checks).
        store: the cache.
        hub: the peer links.
        bucket: the agent's rate limit.
        metrics: the agent's counters.
    """

    def __init__(
        self,
        config: SwarmConfig,
        origin: OriginFill,
        scheduler: SchedulerPort,
        upstreams: SizeLookup,
        store: SeedStore,
        hub: Hub,
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
        self.seeds = SeedBook(
            me=config.peer_id, max_seeding=config.max_seeding, avoid_for=config.rules.avoid_corrupt_for
        )
        self.avoid = AvoidList()
        """peers not used for a while, after they sent corrupt data"""
        self.fetches = NodeFetches()
        """which downloads fetch from the origin (each spares the others' fetchers meanwhile)"""
        self._announcer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

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
        assert dist.digest is not None
        geometry = PieceGeometry.of(partial.size)
        download = SwarmDownload(
            config=self.config,
            partial=partial,
            dist=dist,
            creds=creds,
            geometry=geometry,
            scheduler=self.scheduler,
            peers=self.hub,
            origin=self.origin,
            bucket=self.bucket,
            avoid=self.avoid,
            metrics=self.metrics,
            fetches=self.fetches,
        )
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
            self.seeds.supplied(dist.digest, geometry, download.suppliers)
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
        self.seeds.fallen_back(dist.digest)
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
        blame = self.seeds.rejected(digest, time.monotonic())
        if blame is None:
            return False
        for peer in blame.peers:
            self.avoid.avoid(peer, blame.until)
        log.error("blob %s from the swarm does not match its digest; avoiding %s", digest, ", ".join(blame.peers))
        report = Report(
            self.config.peer_id,
            self.config.address,
            pieces=0,
            contiguous=0,
            failed_parents=list(blame.peers),
            size=blame.geometry.size,
            piece_size=blame.geometry.piece_size,
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
        self.hub.blob_complete(digest, size)
        await self._announce(self.seeds.cached(digest, PieceGeometry.of(size)))

    async def _announce(self, announcement: Announcement) -> None:
        digest, geometry = announcement.digest, announcement.geometry
        hashes: dict[int, str] = {}
        path = self.store.blob_path(digest) if announcement.with_hashes else None
        if path is not None:
            hashes = await asyncio.to_thread(piece_hashes, path, geometry)
        report = Report(
            self.config.peer_id,
            self.config.address,
            pieces=geometry.count,
            contiguous=geometry.size,
            complete=True,
            size=geometry.size,
            piece_size=geometry.piece_size,
            hashes=hashes,
        )
        with contextlib.suppress(SchedulerUnavailable):
            view = await self.scheduler.report(str(digest), report)
            if announcement.needs_hashes(view.hashes_known):
                path = self.store.blob_path(digest)
                if path is not None:
                    hashes = await asyncio.to_thread(piece_hashes, path, geometry)
                    await self.scheduler.report(str(digest), replace(report, hashes=hashes))

    async def _announce_seeds(self) -> None:
        while True:
            await asyncio.sleep(self.config.seed_announce_interval)
            for announcement in self.seeds.due(lambda d: self.store.blob_size(d) is not None):
                await self._announce(announcement)

    async def _head_size(self, dist: DistributionPath, creds: Credentials | None) -> int:
        """The blob's size from the registry; also proves these credentials may read it."""
        size = await self.upstreams.blob_size(creds, dist)
        if size is None:
            raise StoreError(f"{dist.registry} gave no size for {dist.digest}: not using the swarm")
        return size
