"""Fill a partial blob from the upstream registry, resuming with ``Range`` after a broken read."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from prometheus_client import Counter

from shoal.agent.metrics import AgentMetrics
from shoal.agent.upstreams import Upstreams
from shoal.core.digest import Digest
from shoal.oci.auth import Credentials
from shoal.oci.client import UpstreamUnavailable
from shoal.oci.distribution import DistributionPath
from shoal.p2p.ratelimit import TokenBucket
from shoal.store.blobstore import BlobStore, StoreError, StoreFullError, is_disk_full
from shoal.store.partial import PartialBlob

log = logging.getLogger(__name__)

CHUNK = 1 << 20
WRITE_BATCH = 256 << 10
"""received bytes gathered into one write: on a slow or shaped link the body arrives a few KiB
at a time, and a write (thread hop, hashing, waking readers, peers and the reporter) for
each was most of a fetcher's work"""
WRITE_AHEAD = 4
"""chunks received but not yet written: receive and hash+write overlap by this much"""
RETRIES = 3


class OriginSource:
    """The plain mirror's way to get a blob: one GET to the registry, resumed on errors."""

    def __init__(
        self, upstreams: Upstreams, store: BlobStore, metrics: AgentMetrics, bucket: TokenBucket | None = None
    ) -> None:
        self._upstreams = upstreams
        self._store = store
        self._metrics = metrics
        self._bucket = bucket

    async def _copy(
        self,
        resp: aiohttp.ClientResponse,
        partial: PartialBlob,
        pos: int,
        skip: int,
        dist: DistributionPath,
        counter: Counter,
    ) -> None:
        """Stream the body into ``partial``: receiving the next chunk overlaps with hashing and
        writing the previous ones in a worker thread (a few MiB in flight at most)."""
        queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue(maxsize=WRITE_AHEAD)
        failure: list[BaseException] = []

        async def writer() -> None:
            while (item := await queue.get()) is not None:
                if failure:
                    continue  # keep draining so the reader never blocks on a dead writer
                try:
                    await partial.write(*item)
                except (OSError, RuntimeError, ValueError) as exc:
                    failure.append(exc)

        task = asyncio.create_task(writer())
        batch: list[bytes] = []
        batched = 0
        try:
            async for chunk in resp.content.iter_chunked(CHUNK):
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                    if not chunk:
                        continue
                if failure:
                    break
                batch.append(chunk)
                batched += len(chunk)
                counter.inc(len(chunk))
                if batched >= WRITE_BATCH:
                    await queue.put((pos, batch[0] if len(batch) == 1 else b"".join(batch)))
                    pos += batched
                    batch, batched = [], 0
                if self._bucket is not None:
                    await self._bucket.consume(len(chunk))
            if batch and not failure:
                await queue.put((pos, b"".join(batch)))
            await queue.put(None)
            await task
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if failure:
            exc = failure[0]
            if is_disk_full(exc):
                raise StoreFullError(f"disk full while caching {dist.digest}") from exc
            raise StoreError(f"cannot write {dist.digest}: {exc}") from exc

    async def cached(self, digest: Digest, size: int) -> None:
        """Nothing to tell anyone: a plain mirror keeps its cache to itself."""

    def rejected(self, digest: Digest) -> bool:
        """The registry itself sent wrong bytes: asking it again would not help."""
        return False

    async def fill(self, partial: PartialBlob, dist: DistributionPath, creds: Credentials | None) -> None:
        """Write the whole blob into ``partial`` or raise (UpstreamError, StoreError)."""
        client = self._upstreams.client(dist.registry)
        counter = self._metrics.origin_bytes.labels(dist.registry)
        failures = 0
        while True:
            offset = partial.contiguous
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            try:
                resp = await client.open(
                    "GET",
                    f"/v2/{dist.repository}/blobs/{dist.digest}",
                    repository=dist.repository,
                    creds=creds,
                    headers=headers,
                    kind="blob",
                )
            except UpstreamUnavailable:
                failures += 1
                if offset == 0 or failures > RETRIES:
                    raise
                await asyncio.sleep(0.2 * failures)
                continue
            self._upstreams.record_allowed(creds, dist)
            try:
                async with resp:
                    skip = offset if resp.status == 200 else 0
                    if partial.size is None:
                        size = resp.content_length
                        if size is not None:
                            self._store.reserve(partial, size)
                            partial.set_size(size)
                    await self._copy(resp, partial, offset, skip, dist, counter)
                if partial.size is not None and partial.contiguous < partial.size:
                    raise aiohttp.ClientPayloadError(f"upstream closed at {partial.contiguous} of {partial.size} bytes")
                return
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures += 1
                log.warning(
                    "blob %s from %s broke at %d bytes (%r), try %d of %d",
                    dist.digest,
                    dist.registry,
                    partial.contiguous,
                    exc,
                    failures,
                    RETRIES,
                )
                if failures > RETRIES:
                    raise UpstreamUnavailable(f"{dist.registry} kept failing on {dist.digest}: {exc!r}") from exc
                await asyncio.sleep(0.2 * failures)
