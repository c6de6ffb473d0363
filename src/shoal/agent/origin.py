"""Fill a partial blob from the upstream registry, resuming with ``Range`` after a broken read.

The body is read by a thread of the fetch's own, blocking, into one large buffer that is
put on file whole (``PartialBlob.claim_in_thread``) and hashed by a second thread; the event
loop hears of it once per buffer and streams the new bytes to clients with ``sendfile``. The request (the auth
flow, redirects, errors) is ``RegistryClient.open_in_thread``'s.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import http.client
import logging
import mmap
import queue
import threading
import time

from prometheus_client import Counter

from shoal.agent.metrics import AgentMetrics
from shoal.agent.upstreams import Upstreams
from shoal.core.digest import Digest
from shoal.oci.auth import Credentials
from shoal.oci.blocking import NETWORK_ERRORS, BlockingResponse, Interrupt, InterruptedTransfer, run_in_thread
from shoal.oci.client import UpstreamUnavailable, describe_failure
from shoal.oci.distribution import DistributionPath
from shoal.p2p.ratelimit import TokenBucket
from shoal.store.blobstore import BlobStore, StoreError, StoreFullError, is_disk_full
from shoal.store.partial import PartialBlob

log = logging.getLogger(__name__)

BUFFER = 4 << 20
"""bytes received before they are written, hashed and announced in one go: per buffer Python
does a constant amount of work (a write per few KiB of a slow link was most of a fetcher's)"""
FLUSH_INTERVAL = 0.1
"""seconds: on a slow or shaped link, what has arrived is written (so streamed on to clients
and peers) at least this often, full buffer or not"""
BUFFERS = 3
"""buffers per fetch: one being received, the others written and waiting to be hashed"""
RETRIES = 3


class _WriteFailed(Exception):
    """The partial file refused bytes (a full disk, a failed blob): not the network's fault."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class OriginSource:
    """The plain mirror's way to get a blob: one GET to the registry, resumed on errors."""

    def __init__(
        self, upstreams: Upstreams, store: BlobStore, metrics: AgentMetrics, bucket: TokenBucket | None = None
    ) -> None:
        self._upstreams = upstreams
        self._store = store
        self._metrics = metrics
        self._bucket = bucket

    def _copy(
        self,
        resp: BlockingResponse,
        partial: PartialBlob,
        pos: int,
        skip: int,
        counter: Counter,
        interrupt: Interrupt,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """In the fetch's thread: the body into ``partial`` from ``pos``, after dropping
        ``skip`` bytes (a 200 to a resumed request sends again what we have).

        This thread receives into a buffer and puts it on file (``claim_in_thread``); a
        second one hashes it into the prefix (``advance_in_thread``) meanwhile, so receiving
        overlaps with the hashing, the slowest step. Both are done when this returns."""
        free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
        for _ in range(BUFFERS):
            # anonymous maps, not bytearrays: those are zeroed by Python holding the GIL
            # (12 MiB stalled the loop, and the first response, by milliseconds); these are
            # zeroed by the kernel page by page as ``recv`` first fills them
            free.put(memoryview(mmap.mmap(-1, BUFFER)))
        claimed: queue.SimpleQueue[tuple[int, memoryview, int] | None] = queue.SimpleQueue()
        failed: list[BaseException] = []

        def hash_claimed() -> None:
            while (item := claimed.get()) is not None:
                at, full, length = item
                if not failed:
                    try:
                        self._advance(partial, at, full[:length], interrupt, loop)
                    except BaseException as exc:  # handed to the receiving thread
                        failed.append(exc)
                free.put(full)

        hasher = threading.Thread(target=hash_claimed, name=f"shoal-hash {partial.digest}", daemon=True)
        hasher.start()

        def finish_hashing() -> None:
            """Join the hashing thread and hash from the file whatever it left (it failed,
            or was stopped): no claim outlives this fetch, so the next one (or the swarm)
            starts from a prefix that holds what readers were sent."""
            claimed.put(None)
            hasher.join()
            try:
                partial.settle_claims_in_thread()
            except (OSError, RuntimeError, ValueError) as exc:
                failed.append(_WriteFailed(exc))

        try:
            buffer = free.get()
            while skip:
                n = resp.readinto(buffer[: min(skip, BUFFER)])
                if not n:
                    break  # the body ended in what we have: nothing to write
                counter.inc(n)
                skip -= n
            filled = 0
            flushed = time.monotonic()

            def flush() -> None:
                nonlocal buffer, pos, filled, flushed
                if failed:
                    raise failed[0]
                counter.inc(filled)
                try:
                    partial.claim_in_thread(pos, buffer[:filled])
                except (OSError, RuntimeError, ValueError) as exc:
                    raise _WriteFailed(exc) from exc
                claimed.put((pos, buffer, filled))
                pos += filled
                buffer, filled, flushed = free.get(), 0, time.monotonic()

            try:
                while not skip and (n := resp.readinto(buffer[filled:])):
                    filled += n
                    if filled == BUFFER or time.monotonic() - flushed >= FLUSH_INTERVAL:
                        flush()
            except NETWORK_ERRORS:
                if filled:  # good bytes: the resume starts after them
                    flush()
                raise
            if filled:
                flush()
        except BaseException:
            finish_hashing()
            if failed:  # the hashing's failure, not the broken connection's: no resuming
                raise failed[0]  # noqa: B904 (the receiving thread's error is its context)
            raise
        finish_hashing()
        if failed:
            raise failed[0]

    def _advance(
        self, partial: PartialBlob, pos: int, data: memoryview, interrupt: Interrupt, loop: asyncio.AbstractEventLoop
    ) -> None:
        try:
            partial.advance_in_thread(pos, data)
        except (OSError, RuntimeError, ValueError) as exc:
            raise _WriteFailed(exc) from exc
        if self._bucket is not None and self._bucket.rate > 0:
            # the loop owns the bucket; this thread waits for its tokens (fire() cancels that)
            tokens = asyncio.run_coroutine_threadsafe(self._bucket.consume(len(data)), loop)
            interrupt.cancels(tokens)
            try:
                tokens.result()
            except concurrent.futures.CancelledError:
                raise InterruptedTransfer("transfer interrupted") from None

    async def cached(self, digest: Digest, size: int) -> None:
        """Nothing to tell anyone: a plain mirror keeps its cache to itself."""

    def rejected(self, digest: Digest) -> bool:
        """The registry itself sent wrong bytes: asking it again would not help."""
        return False

    async def fill(self, partial: PartialBlob, dist: DistributionPath, creds: Credentials | None) -> None:
        """Write the whole blob into ``partial`` or raise (UpstreamError, StoreError).

        Cancelling the caller stops the fetch's thread (its socket is shut down) and returns
        only once the thread is gone, so nothing writes to ``partial`` afterwards."""
        client = self._upstreams.client(dist.registry)
        counter = self._metrics.origin_bytes.labels(dist.registry)
        loop = asyncio.get_running_loop()
        interrupt = Interrupt()
        failures = 0
        while True:
            offset = partial.contiguous
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            try:
                resp = await client.open_in_thread(
                    f"/v2/{dist.repository}/blobs/{dist.digest}",
                    repository=dist.repository,
                    creds=creds,
                    headers=headers,
                    kind="blob",
                    interrupt=interrupt,
                )
            except UpstreamUnavailable:
                failures += 1
                if offset == 0 or failures > RETRIES:
                    raise
                await asyncio.sleep(0.2 * failures)
                continue
            self._upstreams.record_allowed(creds, dist)
            try:
                try:
                    skip = offset if resp.status == 200 else 0
                    if partial.size is None:
                        size = resp.content_length
                        if size is not None:
                            self._store.reserve(partial, size)
                            partial.set_size(size)
                    copy = functools.partial(self._copy, resp, partial, offset, skip, counter, interrupt, loop)
                    await run_in_thread(copy, interrupt, name=f"shoal-origin {dist.digest}")
                finally:
                    resp.close()
                if partial.size is not None and partial.contiguous < partial.size:
                    raise http.client.IncompleteRead(b"", partial.size - partial.contiguous)
                return
            except _WriteFailed as exc:
                if is_disk_full(exc.cause):
                    raise StoreFullError(f"disk full while caching {dist.digest}") from exc.cause
                raise StoreError(f"cannot write {dist.digest}: {exc.cause}") from exc.cause
            except NETWORK_ERRORS as exc:
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
                    cause = describe_failure(exc, None)
                    raise UpstreamUnavailable(
                        f"{dist.registry} kept failing on {dist.digest}: {cause}", registry=dist.registry, cause=cause
                    ) from exc
                await asyncio.sleep(0.2 * failures)
