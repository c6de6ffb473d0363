"""A blob being written: readers stream its prefix while the writer is still going.

Writers (the origin fetcher, or the swarm's piece downloader) put bytes at offsets; readers
wait for the contiguous prefix to cover what they need. The blob's last byte is held back
until the whole digest checks out, so a client can never finish reading a wrong blob: on a
digest mismatch it sees a truncated body and an aborted connection instead. Bytes before
that are not verified yet, so they go only to a reader of the whole blob (never as the
answer to a ``Range`` request, which could end before the last byte).

When the blob fails for the cache's sake (a full disk), ``failed_prefix`` keeps the digest
state of the prefix written so far: a reader can finish the blob from the registry and still
check the whole of what it sent against the digest.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from enum import Enum
from pathlib import Path

from shoal.core.digest import Digest

READ_CHUNK = 1 << 20
TAIL_BYTES = 16 << 20
"""the newest bytes kept in memory for readers following the writer"""


class PartialState(Enum):
    RUNNING = "running"
    VERIFIED = "verified"
    FAILED = "failed"


class DigestMismatchError(Exception):
    """The bytes received do not hash to the digest that was asked for."""


class PartialBlob:
    """Temporary file of one blob plus the bookkeeping that lets readers follow the writer."""

    def __init__(
        self,
        digest: Digest,
        path: Path,
        size: int | None,
        on_close: Callable[[PartialBlob], None] | None = None,
    ) -> None:
        self.digest = digest
        self.path = path
        self.size = size
        self.state = PartialState.RUNNING
        self.error: BaseException | None = None
        self.contiguous = 0
        self._extents: dict[int, int] = {}
        self._hasher = digest.hasher()
        self.piece_size = 0
        self.piece_hashes: dict[int, str] = {}
        """sha256 of each piece of the verified prefix, once ``piece_size`` is set (swarm)."""
        self._piece_hasher = hashlib.sha256()
        self._prefix_lock = threading.Lock()
        """held while the prefix hash and ``contiguous`` move together (in a worker thread)"""
        self.failed_prefix: tuple[int, hashlib._Hash] | None = None
        """(bytes, digest state over them) of the prefix on file when the blob failed"""
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._changed = asyncio.Event()
        self._pieces_changed = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._tail: deque[tuple[int, bytes | bytearray]] = deque()
        self._tail_bytes = 0
        self._on_close = on_close
        self.size_known: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if size is not None:
            self.size_known.set_result(size)

    # -- writer side -------------------------------------------------------------------------
    def set_size(self, size: int) -> None:
        if self.size is not None and self.size != size:
            raise ValueError(f"blob {self.digest} size changed from {self.size} to {size}")
        self.size = size
        if not self.size_known.done():
            self.size_known.set_result(size)

    async def write(self, offset: int, data: bytes | bytearray) -> None:
        """Write bytes at ``offset``; raises OSError (e.g. ENOSPC) to the writer.

        The file write and the hashing run in a worker thread (both release the GIL), so the
        event loop keeps receiving the next bytes meanwhile, and a write that blocks (the
        kernel throttles writers when dirty pages pile up on a slow disk) never stalls it.
        Writers are serialised; readers only ever look at ``contiguous``, which moves after the
        bytes are on file.
        """
        async with self._write_lock:
            if self.state is not PartialState.RUNNING:
                raise RuntimeError(f"write to a {self.state.value} blob")
            if self.size is not None and offset + len(data) > self.size:
                raise ValueError(f"write past the end of blob {self.digest}")
            before = self.contiguous
            done = asyncio.ensure_future(asyncio.to_thread(self._write_locked, offset, data))
            cancelled = False
            while not done.done():
                # the thread keeps writing when we are cancelled (once or more): hold the lock
                # until it is done, or the next writer would update the bookkeeping from a
                # second thread at the same time
                try:
                    await asyncio.shield(done)
                except asyncio.CancelledError:
                    cancelled = True
            if not done.cancelled() and done.exception() is None:
                self._remember(offset, data)
                self._notify(pieces=self._piece_done(before, offset))
            if cancelled:
                raise asyncio.CancelledError
            done.result()  # the write's own error, if any

    def _write_locked(self, offset: int, data: bytes | bytearray) -> None:
        length = len(data)
        written = 0
        view = memoryview(data)
        while written < length:
            written += os.pwrite(self._fd, view[written:], offset + written)
        if offset <= self.contiguous < offset + length:
            self._feed(view[self.contiguous - offset :])
            self._absorb_extents()
        elif offset > self.contiguous:
            self._extents[offset] = max(self._extents.get(offset, 0), offset + length)

    def _remember(self, offset: int, data: bytes | bytearray) -> None:
        """Keep the newest bytes in memory: readers right behind the writer skip the file."""
        self._tail.append((offset, data))
        self._tail_bytes += len(data)
        while self._tail_bytes > TAIL_BYTES and len(self._tail) > 1:
            self._tail_bytes -= len(self._tail.popleft()[1])

    def _from_tail(self, pos: int, end: int) -> memoryview | None:
        for start, data in reversed(self._tail):
            if start <= pos < start + len(data):
                return memoryview(data)[pos - start : min(len(data), end - start)]
        return None

    def set_piece_size(self, piece_size: int) -> None:
        """Hash pieces as the prefix grows (the origin fetcher publishes these hashes)."""
        if self.contiguous % piece_size:
            raise RuntimeError("piece hashing must start at a piece boundary")
        self.piece_size = piece_size

    def changed(self) -> asyncio.Event:
        """An event set at the next write or state change."""
        return self._changed

    def pieces_changed(self) -> asyncio.Event:
        """An event set when a piece may have become complete, or at a state change: what
        peers long-polling the piece map wait for. The origin fetcher writes a piece in many
        small writes; waking every child's long-poll at each of them cost the busiest node of
        a swarm more CPU than its share."""
        return self._pieces_changed

    def _piece_done(self, before: int, offset: int) -> bool:
        if not self.piece_size or offset > before:
            return True  # whole pieces (the swarm's writes), or an extent out of order
        ps = self.piece_size
        return self.contiguous // ps != before // ps or self.contiguous == self.size

    def has(self, offset: int, length: int) -> bool:
        """Whether ``[offset, offset+length)`` is written (the swarm serves such ranges)."""
        if offset + length <= self.contiguous:
            return True
        end = self._extents.get(offset)
        return end is not None and end >= offset + length

    def _feed(self, data: bytes | memoryview) -> None:
        """Advance the prefix over ``data`` (the bytes at ``contiguous``)."""
        with self._prefix_lock:
            self._hasher.update(data)
            if not self.piece_size:
                self.contiguous += len(data)
                return
            view = memoryview(data)
            while view:
                room = self.piece_size - (self.contiguous % self.piece_size)
                part, view = view[:room], view[room:]
                self._piece_hasher.update(part)
                self.contiguous += len(part)
                if self.contiguous % self.piece_size == 0 or self.contiguous == self.size:
                    index = (self.contiguous - 1) // self.piece_size
                    self.piece_hashes[index] = self._piece_hasher.hexdigest()
                    self._piece_hasher = hashlib.sha256()

    def _absorb_extents(self) -> None:
        """Extend the prefix over extents written earlier out of order (re-reading them)."""
        while True:
            end = max((e for s, e in self._extents.items() if s <= self.contiguous < e), default=None)
            if end is None:
                break
            while self.contiguous < end:
                chunk = os.pread(self._fd, min(READ_CHUNK, end - self.contiguous), self.contiguous)
                if not chunk:
                    raise OSError(f"short read from {self.path}")
                self._feed(chunk)
        for start in [s for s, e in self._extents.items() if e <= self.contiguous]:
            del self._extents[start]

    def finish(self) -> None:
        """All bytes are written: check the digest. Raises DigestMismatchError and fails."""
        if self.size is None:
            self.set_size(self.contiguous)
        if self.contiguous != self.size:
            exc: Exception = ValueError(f"blob {self.digest} incomplete: {self.contiguous} of {self.size} bytes")
            self.fail(exc)
            raise exc
        actual = self._hasher.hexdigest()
        if actual != self.digest.hex:
            mismatch = DigestMismatchError(
                f"blob {self.digest} has wrong content: got {self.digest.algorithm}:{actual}"
            )
            self.fail(mismatch)
            raise mismatch
        self.state = PartialState.VERIFIED
        self._notify()

    def fail(self, exc: BaseException) -> None:
        if self.state is PartialState.FAILED:
            return
        self.state = PartialState.FAILED
        self.error = exc
        with self._prefix_lock:
            self.failed_prefix = (self.contiguous, self._hasher.copy())
        if not self.size_known.done():
            self.size_known.set_exception(exc)
            self.size_known.exception()  # mark retrieved: nobody may be waiting
        self._notify()
        self._tail.clear()
        self.close()
        self.path.unlink(missing_ok=True)

    def fsync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            if self._on_close is not None:
                self._on_close(self)

    def _notify(self, *, pieces: bool = True) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        if pieces:
            self._pieces_changed.set()
            self._pieces_changed = asyncio.Event()

    # -- reader side -------------------------------------------------------------------------
    def readable_limit(self) -> int:
        """How far readers may read now: the last byte waits for verification."""
        if self.state is PartialState.VERIFIED:
            return self.contiguous
        if self.state is PartialState.FAILED:
            assert self.error is not None
            raise self.error
        return max(0, self.contiguous - 1)

    async def wait_readable(self, pos: int) -> int:
        """Block until bytes beyond ``pos`` may be read; returns the limit (== pos at the end)."""
        while True:
            limit = self.readable_limit()
            if limit > pos or (self.state is PartialState.VERIFIED and limit == pos):
                return limit
            await self._changed.wait()

    def open_reader(self) -> int:
        """A private fd: survives the rename into the cache, the writer closing its own, and
        the file's removal when the blob fails."""
        return os.open(self.path, os.O_RDONLY)

    async def iter_range(self, start: int, end: int) -> AsyncIterator[bytes | memoryview]:
        """Yield bytes ``[start, end)`` as they become readable."""
        fd = self.open_reader()
        try:
            pos = start
            while pos < end:
                limit = await self.wait_readable(pos)
                if limit <= pos:
                    raise EOFError(f"blob {self.digest} ended at {pos}, wanted {end}")
                stop = min(limit, end)
                while pos < stop:
                    chunk: bytes | memoryview | None = self._from_tail(pos, stop)
                    if chunk is None:
                        chunk = os.pread(fd, min(READ_CHUNK, stop - pos), pos)
                        if not chunk:
                            raise OSError(f"short read from partial blob {self.digest}")
                    pos += len(chunk)
                    yield chunk
        finally:
            os.close(fd)
