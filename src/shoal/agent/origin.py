"""Fill a partial blob from the upstream registry, resuming with ``Range`` after a broken read."""

from __future__ import annotations

import asyncio
import logging

import aiohttp

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

    async def cached(self, digest: Digest, size: int) -> None:
        """Nothing to tell anyone: a plain mirror keeps its cache to itself."""

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
                    pos = offset
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        if skip:
                            cut = min(skip, len(chunk))
                            chunk, skip = chunk[cut:], skip - cut
                            if not chunk:
                                continue
                        try:
                            partial.write(pos, chunk)
                        except OSError as exc:
                            if is_disk_full(exc):
                                raise StoreFullError(f"disk full while caching {dist.digest}") from exc
                            raise StoreError(f"cannot write {dist.digest}: {exc}") from exc
                        pos += len(chunk)
                        counter.inc(len(chunk))
                        if self._bucket is not None:
                            await self._bucket.consume(len(chunk))
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
