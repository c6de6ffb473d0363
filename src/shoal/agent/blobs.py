"""Serve blobs: from the cache with sendfile, from a download in progress, or straight through.

One download per blob per node: concurrent requests join the same PartialBlob. The download
runs in its own task, so a client that disconnects does not cancel it for the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Protocol

import aiohttp
from aiohttp import web

from shoal.agent.metrics import AgentMetrics
from shoal.agent.upstreams import Upstreams, map_upstream_error
from shoal.core.digest import Digest
from shoal.oci.auth import Credentials
from shoal.oci.client import UpstreamError
from shoal.oci.distribution import DistributionPath
from shoal.oci.errors import DistributionError, ErrorCode
from shoal.oci.ranges import ByteRange, parse_range
from shoal.store.blobstore import BlobStore, StoreError
from shoal.store.partial import DigestMismatchError, PartialBlob

log = logging.getLogger(__name__)

OCTET_STREAM = "application/octet-stream"


class BlobSource(Protocol):
    """Where a missing blob comes from: the origin registry, or the swarm."""

    async def fill(self, partial: PartialBlob, dist: DistributionPath, creds: Credentials | None) -> None:
        """Write every byte of the blob into ``partial`` (or raise)."""

    async def cached(self, digest: Digest, size: int) -> None:
        """The blob is now complete in the cache."""


def blob_headers(digest: Digest, size: int, rng: ByteRange | None) -> dict[str, str]:
    headers = {
        "Docker-Content-Digest": str(digest),
        "Content-Type": OCTET_STREAM,
        "Accept-Ranges": "bytes",
        "Content-Length": str(rng.length if rng else size),
    }
    if rng is not None:
        headers["Content-Range"] = rng.content_range()
    return headers


class BlobService:
    def __init__(self, store: BlobStore, upstreams: Upstreams, source: BlobSource, metrics: AgentMetrics) -> None:
        self.store = store
        self.upstreams = upstreams
        self.source = source
        self.metrics = metrics
        self.partials: dict[Digest, PartialBlob] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._no_sendfile = False

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def serve(
        self, request: web.Request, dist: DistributionPath, creds: Credentials | None
    ) -> web.StreamResponse:
        digest = dist.digest
        assert digest is not None
        head = request.method == "HEAD"
        path = self.store.blob_path(digest)
        if path is not None:
            await self.upstreams.authorize(creds, dist)
            size = self.store.blob_size(digest)
            assert size is not None
            rng = parse_range(request.headers.get("Range"), size)
            self.metrics.cache_hits.labels("blob").inc()
            if head:
                return web.Response(status=200, headers=blob_headers(digest, size, None))
            self.metrics.bytes_served.labels("cache").inc(rng.length if rng else size)
            response = web.FileResponse(path, chunk_size=1 << 20)
            response.headers["Docker-Content-Digest"] = str(digest)
            response.content_type = OCTET_STREAM
            return response
        self.metrics.cache_misses.labels("blob").inc()
        partial = self.partials.get(digest)
        if head and partial is None:
            return await self._head_upstream(dist, creds)
        if partial is not None:
            await self.upstreams.authorize(creds, dist)
        else:
            partial = self._start(dist, creds)
            if partial is None:
                return await self._passthrough(request, dist, creds)
        try:
            size = await asyncio.shield(partial.size_known)
        except StoreError:
            return await self._passthrough(request, dist, creds)
        except UpstreamError as exc:
            raise map_upstream_error(exc, dist) from None
        rng = parse_range(request.headers.get("Range"), size)
        if head:
            return web.Response(status=200, headers=blob_headers(digest, size, None))
        return await self._stream_partial(request, dist, creds, partial, size, rng)

    def _start(self, dist: DistributionPath, creds: Credentials | None) -> PartialBlob | None:
        digest = dist.digest
        assert digest is not None
        try:
            partial = self.store.begin(digest, None)
        except StoreError as exc:
            log.warning("not caching %s: %s", digest, exc)
            return None
        self.partials[digest] = partial
        task = asyncio.create_task(self._download(partial, dist, creds), name=f"download {digest}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return partial

    async def _download(self, partial: PartialBlob, dist: DistributionPath, creds: Credentials | None) -> None:
        self.metrics.inflight.inc()
        try:
            await self.source.fill(partial, dist, creds)
            partial.finish()
            await self.store.commit(partial)
            await self.source.cached(partial.digest, partial.size or 0)
            log.info("cached %s (%d bytes)", partial.digest, partial.size or 0)
        except DigestMismatchError as exc:
            log.error("%s", exc)
            self.metrics.digest_mismatches.labels("origin").inc()
        except (UpstreamError, StoreError) as exc:
            log.warning("download of %s failed: %s", partial.digest, exc)
            self.metrics.upstream_errors.labels(dist.registry, type(exc).__name__).inc()
            partial.fail(exc)
        except asyncio.CancelledError as exc:
            partial.fail(exc)
            raise
        except Exception as exc:
            log.exception("download of %s crashed", partial.digest)
            partial.fail(exc)
        finally:
            self.metrics.inflight.dec()
            self.metrics.cache_bytes.set(self.store.total_size)
            self.metrics.cache_entries.set(self.store.count)
            if self.partials.get(partial.digest) is partial:
                del self.partials[partial.digest]

    async def _stream_partial(
        self,
        request: web.Request,
        dist: DistributionPath,
        creds: Credentials | None,
        partial: PartialBlob,
        size: int,
        rng: ByteRange | None,
    ) -> web.StreamResponse:
        start, end = (rng.start, rng.end + 1) if rng else (0, size)
        response = web.StreamResponse(status=206 if rng else 200, headers=blob_headers(partial.digest, size, rng))
        await response.prepare(request)
        counter = self.metrics.bytes_served.labels("stream")
        pos = start
        try:
            if request.transport is not None and not self._no_sendfile:
                try:
                    async for sent in self._sendfile_partial(request.transport, partial, start, end):
                        pos += sent
                        counter.inc(sent)
                except NotImplementedError:  # uvloop: no sendfile, copy through Python instead
                    self._no_sendfile = True
            if pos < end:  # no sendfile here (or it stopped early): copy the rest through Python
                async for chunk in partial.iter_range(pos, end):
                    await response.write(chunk)
                    pos += len(chunk)
                    counter.inc(len(chunk))
        except StoreError as exc:
            log.warning("cache failed under %s at %d (%s): streaming the rest from origin", partial.digest, pos, exc)
            await self._pipe_upstream(response, dist, creds, pos, end, verify=False)
        await response.write_eof()
        return response

    async def _upstream_size(self, dist: DistributionPath, creds: Credentials | None) -> int:
        try:
            size = await self.upstreams.blob_size(creds, dist)
        except UpstreamError as exc:
            raise map_upstream_error(exc, dist) from None
        if size is None:
            raise DistributionError(ErrorCode.UPSTREAM_INVALID, f"{dist.registry} sent no blob size")
        return size

    @staticmethod
    async def _sendfile_partial(
        transport: asyncio.BaseTransport, partial: PartialBlob, start: int, end: int
    ) -> AsyncIterator[int]:
        """Zero-copy the readable part of ``[start, end)`` as it grows; yields bytes sent.

        The kernel copies from the page cache to the socket: no Python-level copy of the
        bytes, which was the agent's largest per-byte cost when following a download."""
        loop = asyncio.get_running_loop()
        with open(partial.open_reader(), "rb", closefd=True) as fobj:
            pos = start
            while pos < end:
                limit = await partial.wait_readable(pos)
                if limit <= pos:
                    raise EOFError(f"blob {partial.digest} ended at {pos}, wanted {end}")
                count = min(limit, end) - pos
                await loop.sendfile(transport, fobj, pos, count)  # type: ignore[arg-type]
                pos += count
                yield count

    async def _head_upstream(self, dist: DistributionPath, creds: Credentials | None) -> web.Response:
        assert dist.digest is not None
        size = await self._upstream_size(dist, creds)
        return web.Response(status=200, headers=blob_headers(dist.digest, size, None))

    async def _passthrough(
        self, request: web.Request, dist: DistributionPath, creds: Credentials | None
    ) -> web.StreamResponse:
        """Serve without caching (disk full or cache unusable): a pull must still succeed."""
        digest = dist.digest
        assert digest is not None
        size = await self._upstream_size(dist, creds)
        rng = parse_range(request.headers.get("Range"), size)
        if request.method == "HEAD":
            return web.Response(status=200, headers=blob_headers(digest, size, None))
        start, end = (rng.start, rng.end + 1) if rng else (0, size)
        response = web.StreamResponse(status=206 if rng else 200, headers=blob_headers(digest, size, rng))
        await response.prepare(request)
        await self._pipe_upstream(response, dist, creds, start, end, verify=rng is None)
        await response.write_eof()
        return response

    async def _pipe_upstream(
        self,
        response: web.StreamResponse,
        dist: DistributionPath,
        creds: Credentials | None,
        start: int,
        end: int,
        *,
        verify: bool,
    ) -> None:
        """Copy ``[start, end)`` of the blob from upstream; with ``verify``, hold the last chunk
        back until the digest matches."""
        digest = dist.digest
        assert digest is not None
        hasher = digest.hasher() if verify else None
        counter = self.metrics.bytes_served.labels("passthrough")
        origin = self.metrics.origin_bytes.labels(dist.registry)
        try:
            resp = await self.upstreams.client(dist.registry).open(
                "GET",
                f"/v2/{dist.repository}/blobs/{digest}",
                repository=dist.repository,
                creds=creds,
                headers={"Range": f"bytes={start}-{end - 1}"},
                kind="blob",
            )
        except UpstreamError as exc:
            # the response has started: no error body can follow, only a cut connection
            raise ConnectionError(f"cannot pass {digest} through: {exc}") from exc
        skip = start if resp.status == 200 else 0
        pos = start
        held: bytes | None = None
        try:
            async with resp:
                async for chunk in resp.content.iter_chunked(1 << 20):
                    origin.inc(len(chunk))
                    if skip:
                        cut = min(skip, len(chunk))
                        chunk, skip = chunk[cut:], skip - cut
                    chunk = chunk[: end - pos]
                    if not chunk:
                        continue
                    if hasher is not None:
                        hasher.update(chunk)
                    if held is not None:
                        await response.write(held)
                        counter.inc(len(held))
                    held = chunk
                    pos += len(chunk)
                    if pos >= end:
                        break
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ConnectionError(f"upstream broke while passing {digest} through: {exc!r}") from exc
        if pos < end:
            raise ConnectionError(f"upstream ended {digest} at {pos} of {end} bytes")
        if hasher is not None and hasher.hexdigest() != digest.hex:
            self.metrics.digest_mismatches.labels("origin").inc()
            raise DigestMismatchError(f"blob {digest} from {dist.registry} has wrong content")
        if held is not None:
            await response.write(held)
            counter.inc(len(held))
