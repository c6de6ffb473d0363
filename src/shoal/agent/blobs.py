"""Serve blobs: from the cache with sendfile, from a download in progress, or straight through.

One download per blob per node: concurrent requests join the same PartialBlob. The download
runs in its own task, so a client that disconnects does not cancel it for the others.

No byte leaves unverified:
    * a cached blob was checked against its digest before it was renamed into the cache;
    * a download in flight goes only to readers of the whole blob, and its last byte waits
      for the digest (a wrong blob ends in a cut connection, never a complete response);
    * when the cache fails under such a reader (a full disk), the rest comes from the
      registry and the digest is still checked over everything the reader was sent;
    * a ``Range`` of a blob not yet cached comes straight from the registry, for this
      request, with the client's credentials (while the whole blob is fetched into the
      cache): bytes of a download in flight are not verified yet, and a range may end
      before the last byte that would prove them.

Cached content (and a download started by another client) goes to a client only after the
registry confirmed that this repository holds this digest for its credentials
(``Upstreams.authorize``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from typing import BinaryIO, Protocol

import aiohttp
from aiohttp import web

from shoal.agent.metrics import AgentMetrics
from shoal.agent.upstreams import Upstreams
from shoal.core.digest import Digest
from shoal.core.ratelog import RateLimitedLog
from shoal.oci.auth import Credentials
from shoal.oci.client import UpstreamError
from shoal.oci.distribution import DistributionPath
from shoal.oci.errors import DistributionError, ErrorCode
from shoal.oci.ranges import ByteRange, parse_range
from shoal.store.blobstore import StoreError
from shoal.store.contract import CacheStore
from shoal.store.file_range import file_chunks
from shoal.store.partial import DigestMismatchError, PartialBlob, PartialState

log = logging.getLogger(__name__)

OCTET_STREAM = "application/octet-stream"
COPY_CHUNK = 1 << 20
SEND_CHUNK = 8 << 20


class BlobSource(Protocol):
    """Where a missing blob comes from: the origin registry, or the swarm."""

    async def fill(self, partial: PartialBlob, dist: DistributionPath, creds: Credentials | None) -> None:
        """Write every byte of the blob into ``partial`` (or raise)."""

    async def cached(self, digest: Digest, size: int) -> None:
        """The blob is now complete in the cache."""

    def rejected(self, digest: Digest) -> bool:
        """The bytes this source wrote do not match the digest. True: the origin may still
        have it right (the swarm's pieces were bad), so fetch it again from there."""


def _hash_file(hasher: hashlib._Hash, fd: int, start: int, stop: int) -> None:
    """Feed ``[start, stop)`` of the file into ``hasher``."""
    for chunk in file_chunks(fd, start, stop, COPY_CHUNK):
        hasher.update(chunk)


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
    def __init__(
        self,
        store: CacheStore,
        upstreams: Upstreams,
        source: BlobSource,
        metrics: AgentMetrics,
        origin: BlobSource | None = None,
        send_timeout: float = 30.0,
    ) -> None:
        self.store = store
        self.upstreams = upstreams
        self.source = source
        self.origin = origin or source
        """where a blob goes when ``source`` filled it with the wrong bytes"""
        self.metrics = metrics
        self.partials: dict[Digest, PartialBlob] = {}
        self._started_for: dict[Digest, tuple[PartialBlob, DistributionPath]] = {}
        """each download in ``partials`` and what it was started for"""
        self.send_timeout = send_timeout
        self._cuts = RateLimitedLog(log, "cutting responses")
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
        range_header = None if head else request.headers.get("Range")
        path = self.store.blob_path(digest)
        if path is not None:
            await self.upstreams.authorize(creds, dist)
            size = self.store.blob_size(digest)
            assert size is not None
            rng = parse_range(range_header, size)
            self.metrics.cache_hits.labels("blob").inc()
            if head:
                return web.Response(status=200, headers=blob_headers(digest, size, None))
            return await self._send_file(request, path, digest, size, rng)
        self.metrics.cache_misses.labels("blob").inc()
        partial = self.partials.get(digest)
        if head and partial is None:
            return await self._passthrough(request, dist, creds)
        if range_header is not None:
            # the range from the registry now; the whole blob into the cache meanwhile, once
            size = await self._upstream_size(dist, creds)  # also the access check for a partial
            if partial is None:
                self._start(dist, creds, self.source)
            return await self._passthrough(request, dist, creds, size)
        if partial is not None:
            await self.upstreams.authorize(creds, dist)
        for _ in range(3):
            mine = False
            if partial is None:
                partial = self.partials.get(digest)
                if partial is None:
                    partial, mine = self._start(dist, creds, self.source), True
                    if partial is None:
                        break
            started = self._started_for.get(digest)
            if not mine and started is not None and started[0] is partial and started[1].registry != dist.registry:
                # started through another registry name: its registry's troubles (or an
                # attacker's slow one) are not this client's; pass through, verified
                break
            try:
                size = await asyncio.shield(partial.size_known)
            except StoreError:
                break
            except (UpstreamError, DistributionError):  # DistributionError: refused during an outage
                if mine:
                    raise
                partial = None  # another client's download failed for its own reasons: start ours
                continue
            if head:
                return web.Response(status=200, headers=blob_headers(digest, size, None))
            try:
                reader = partial.open_reader()
            except FileNotFoundError:  # it failed meanwhile: follow (or start) the next one
                partial = None
                continue
            return await self._stream_partial(request, dist, creds, partial, size, reader)
        return await self._passthrough(request, dist, creds)

    # -- downloads ---------------------------------------------------------------------------
    def _start(self, dist: DistributionPath, creds: Credentials | None, source: BlobSource) -> PartialBlob | None:
        digest = dist.digest
        assert digest is not None
        try:
            partial = self.store.begin(digest, None)
        except StoreError as exc:
            log.warning("not caching %s: %s", digest, exc)
            return None
        self.partials[digest] = partial
        self._started_for[digest] = (partial, dist)
        task = asyncio.create_task(self._download(partial, dist, creds, source), name=f"download {digest}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return partial

    async def _download(
        self, partial: PartialBlob, dist: DistributionPath, creds: Credentials | None, source: BlobSource
    ) -> None:
        self.metrics.inflight.inc()
        refetch = False
        try:
            await source.fill(partial, dist, creds)
            partial.finish()
            await self.store.commit(partial)
            await source.cached(partial.digest, partial.size or 0)
            log.info("cached %s (%d bytes)", partial.digest, partial.size or 0)
        except DigestMismatchError as exc:
            self.metrics.digest_mismatches.labels("origin" if source is self.origin else "swarm").inc()
            refetch = source is not self.origin and source.rejected(partial.digest)
            log.error("%s%s", exc, ": fetching it again from the origin" if refetch else "")
        except (UpstreamError, StoreError, DistributionError) as exc:
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
                del self._started_for[partial.digest]
            if refetch:
                self._start(dist, creds, self.origin)

    # -- responses ---------------------------------------------------------------------------
    def _cut(self, request: web.Request, response: web.StreamResponse, reason: str) -> web.StreamResponse:
        """Abort a response whose headers are sent: the client sees a broken connection, never
        a complete body (a Content-Length it could reach with wrong or missing bytes)."""
        self.metrics.responses_cut.inc()
        self._cuts.note(reason)
        if request.transport is not None:
            request.transport.abort()
        return response

    async def _send_file(
        self, request: web.Request, path: os.PathLike[str], digest: Digest, size: int, rng: ByteRange | None
    ) -> web.StreamResponse:
        """A cached (verified) blob, or one range of it, with ``sendfile``."""
        start, stop = (rng.start, rng.stop) if rng else (0, size)
        response = web.StreamResponse(status=206 if rng else 200, headers=blob_headers(digest, size, rng))
        try:
            fobj: BinaryIO = await asyncio.to_thread(open, path, "rb")
        except OSError:
            raise DistributionError(ErrorCode.BLOB_UNKNOWN, f"{digest} was evicted; ask again") from None
        with fobj:
            await response.prepare(request)
            try:
                await self._copy_file(request, response, fobj, start, stop)
            except (OSError, ConnectionError) as exc:
                return self._cut(request, response, f"sending cached {digest}: {exc!r}")
        self.metrics.bytes_served.labels("cache").inc(stop - start)
        await response.write_eof()
        return response

    async def _copy_file(
        self, request: web.Request, response: web.StreamResponse, fobj: BinaryIO, start: int, stop: int
    ) -> None:
        """Zero-copy ``[start, stop)`` of the file to the client: the kernel copies from the
        page cache to the socket. Loops without sendfile (uvloop) copy through Python instead.
        Every ``SEND_CHUNK`` must leave within ``send_timeout``: a client that stops reading
        would otherwise hold its connection, a file and a slot forever."""
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("client went away")
        loop = asyncio.get_running_loop()
        pos = start
        while pos < stop:
            count = min(SEND_CHUNK, stop - pos)
            try:
                async with asyncio.timeout(self.send_timeout):
                    if not self._no_sendfile:
                        try:
                            await loop.sendfile(transport, fobj, pos, count)
                            pos += count
                            continue
                        except NotImplementedError:
                            self._no_sendfile = True
                    await self._copy_through_python(response, fobj, pos, count)
                    pos += count
            except TimeoutError:
                raise ConnectionError(f"client read nothing for {self.send_timeout:.0f}s") from None

    @staticmethod
    async def _copy_through_python(response: web.StreamResponse, fobj: BinaryIO, pos: int, count: int) -> None:
        for chunk in file_chunks(fobj.fileno(), pos, pos + count, COPY_CHUNK):
            await response.write(chunk)

    async def _stream_partial(
        self,
        request: web.Request,
        dist: DistributionPath,
        creds: Credentials | None,
        partial: PartialBlob,
        size: int,
        reader: int,
    ) -> web.StreamResponse:
        """The whole blob while it arrives (``reader``: our own fd of its file); its last byte
        waits for the digest."""
        response = web.StreamResponse(status=200, headers=blob_headers(partial.digest, size, None))
        counter = self.metrics.bytes_served.labels("stream")
        pos = 0
        with os.fdopen(reader, "rb") as fobj:
            await response.prepare(request)
            try:
                while pos < size:
                    try:
                        limit = await partial.wait_readable(pos)
                        if limit <= pos:
                            raise EOFError(f"blob {partial.digest} ended at {pos}, wanted {size}")
                    except Exception as exc:
                        if partial.state is not PartialState.FAILED or isinstance(exc, DigestMismatchError):
                            raise
                        # the cache failed (a full disk), or the download another client started did
                        log.warning(
                            "download of %s failed under a reader at %d (%s): the rest from the origin",
                            partial.digest,
                            pos,
                            exc,
                        )
                        await self._finish_from_upstream(request, response, dist, creds, partial, fobj, pos, size)
                        break
                    # a copy cut short (a client too slow) sent an unknown part of its range:
                    # its error cuts the connection, never resumes at ``pos`` (bytes twice)
                    await self._copy_file(request, response, fobj, pos, limit)
                    counter.inc(limit - pos)
                    pos = limit
            except Exception as exc:  # the response has started: a cut connection is the only error left
                return self._cut(request, response, f"streaming {partial.digest} at {pos}: {exc!r}")
        await response.write_eof()
        return response

    async def _finish_from_upstream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        dist: DistributionPath,
        creds: Credentials | None,
        partial: PartialBlob,
        fobj: BinaryIO,
        pos: int,
        size: int,
    ) -> None:
        """Send the rest of a failed download: what was on file from our own fd, then the rest
        from the registry, the digest checked over all of it (the failed blob's prefix state,
        carried over any bytes we sent past it: written, not hashed yet, when it failed)."""
        if partial.failed_prefix is None:
            raise ConnectionError(f"cannot finish {partial.digest}: no prefix state")
        on_file, prefix = partial.failed_prefix
        hasher = prefix.copy()
        if pos < on_file:
            await self._copy_file(request, response, fobj, pos, on_file)
            self.metrics.bytes_served.labels("stream").inc(on_file - pos)
        elif pos > on_file:
            await asyncio.to_thread(_hash_file, hasher, fobj.fileno(), on_file, pos)
        start = max(pos, on_file)
        if start < size:
            await self._pipe_upstream(response, dist, creds, start, size, hasher)
        elif hasher.hexdigest() != dist.digest.hex:  # type: ignore[union-attr]
            raise DigestMismatchError(f"blob {dist.digest} on file has wrong content")

    async def _upstream_size(self, dist: DistributionPath, creds: Credentials | None) -> int:
        size = await self.upstreams.blob_size(creds, dist)
        if size is None:
            raise DistributionError(ErrorCode.UPSTREAM_INVALID, f"{dist.registry} sent no blob size")
        return size

    async def _passthrough(
        self, request: web.Request, dist: DistributionPath, creds: Credentials | None, size: int | None = None
    ) -> web.StreamResponse:
        """Straight from the registry, not cached: a range of a blob not cached yet, or any
        request when the disk is full. A whole blob is checked against its digest."""
        digest = dist.digest
        assert digest is not None
        if size is None:
            size = await self._upstream_size(dist, creds)
        if request.method == "HEAD":
            return web.Response(status=200, headers=blob_headers(digest, size, None))
        rng = parse_range(request.headers.get("Range"), size)
        start, stop = (rng.start, rng.stop) if rng else (0, size)
        response = web.StreamResponse(status=206 if rng else 200, headers=blob_headers(digest, size, rng))
        await response.prepare(request)
        try:
            await self._pipe_upstream(response, dist, creds, start, stop, None if rng else digest.hasher())
        except Exception as exc:  # the response has started: a cut connection is the only error left
            return self._cut(request, response, f"passing {digest} through: {exc!r}")
        await response.write_eof()
        return response

    async def _pipe_upstream(
        self,
        response: web.StreamResponse,
        dist: DistributionPath,
        creds: Credentials | None,
        start: int,
        end: int,
        hasher: hashlib._Hash | None,
    ) -> None:
        """Copy ``[start, end)`` of the blob from upstream. With ``hasher`` (the digest state of
        the bytes before ``start``), the last chunk is held back until the digest matches."""
        digest = dist.digest
        assert digest is not None
        counter = self.metrics.bytes_served.labels("passthrough")
        origin = self.metrics.origin_bytes.labels(dist.registry)
        try:
            resp = await self.upstreams.client(dist.registry).open(
                "GET",
                f"/v2/{dist.repository}/blobs/{digest}",
                repository=dist.repository,
                creds=creds,
                headers={"Range": f"bytes={start}-{end - 1}"} if start < end else None,
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
                async for chunk in resp.content.iter_chunked(COPY_CHUNK):
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
