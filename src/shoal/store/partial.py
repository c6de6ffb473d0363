"""A blob being written: readers stream its prefix while the writer is still going.

Writers (the origin fetcher, or the swarm's piece downloader) put bytes at offsets; readers
wait for the contiguous prefix to cover what they need. The blob's last byte is held back
until the whole digest checks out, so a client can never finish reading a wrong blob: on a
digest mismatch it sees a truncated body and an aborted connection instead. Bytes before
that are not verified yet, so they go only to a reader of the whole blob (never as the
answer to a ``Range`` request, which could end before the last byte). For the same reason
such a reader need not wait for the hashing: it may read the in-order writer's bytes as soon
as they are on file (``claim_in_thread``), since nothing else can change them there, and
they are hashed from there if the writer stops before hashing them (``settle_claims_in_thread``).

When the blob fails for the cache's sake (a full disk), ``failed_prefix`` keeps the digest
state of the prefix written so far: a reader can finish the blob from the registry and still
check the whole of what it sent against the digest.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Callable
from enum import Enum
from pathlib import Path

from shoal.core.digest import Digest
from shoal.store.file_range import file_chunks

READ_CHUNK = 1 << 20
PARALLEL_DIGEST_MIN = 256 << 10
"""bytes fed at once from which the blob digest and the piece hashes run in two threads:
below it a handoff to the helper costs more than it saves"""

_DIGEST_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_DIGEST_POOL_LOCK = threading.Lock()


def _digest_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The helper threads that hash blob digests beside the piece hashes (made on first use,
    shared by every blob: each task hashes one run and waits for nothing)."""
    global _DIGEST_POOL
    with _DIGEST_POOL_LOCK:
        if _DIGEST_POOL is None:
            _DIGEST_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="shoal-digest")
        return _DIGEST_POOL


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
        self._claimed = 0
        """end of the bytes an in-order writer put on file past ``contiguous``, unhashed yet"""
        self._on_file = 0
        """end of the claimed bytes on file with no gap (every write below it returned):
        what readers may stream"""
        self._writing: dict[int, int] = {}
        """claims whose write has not returned yet: start -> end"""
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
        """one writer on the event loop at a time (each holds ``_lock`` in its thread)"""
        self._lock = threading.Lock()
        """held by whichever thread writes: the bookkeeping, the file and closing it"""
        self._loop = asyncio.get_running_loop()
        self._on_close = on_close
        self.size_known: asyncio.Future[int] = self._loop.create_future()
        if size is not None:
            self.size_known.set_result(size)

    # -- writer side -------------------------------------------------------------------------
    def set_size(self, size: int) -> None:
        if self.size is not None and self.size != size:
            raise ValueError(f"blob {self.digest} size changed from {self.size} to {size}")
        self.size = size
        if not self.size_known.done():
            self.size_known.set_result(size)

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write bytes at ``offset``; raises OSError (e.g. ENOSPC) to the writer.

        The file write and the hashing run in a worker thread (both release the GIL), so the
        event loop keeps receiving the next bytes meanwhile, and a write that blocks (the
        kernel throttles writers when dirty pages pile up on a slow disk) never stalls it.
        Writers are serialised; readers only ever look at ``contiguous``, which moves after the
        bytes are on file.
        """
        async with self._write_lock:
            done = asyncio.ensure_future(asyncio.to_thread(self._write_sync, offset, data))
            cancelled = False
            while not done.done():
                # the thread keeps writing when we are cancelled (once or more): hold the lock
                # until it is done, so writers on the loop stay one at a time
                try:
                    await asyncio.shield(done)
                except asyncio.CancelledError:
                    cancelled = True
            if not done.cancelled() and done.exception() is None:
                self._notify(pieces=done.result())
            if cancelled:
                raise asyncio.CancelledError
            done.result()  # the write's own error, if any

    def claim_in_thread(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """First half of a write by an in-order writer in a thread of its own (the origin
        fetch): put the bytes on file at the end of the prefix, without hashing them yet.
        Until ``advance_in_thread`` hashes them, that range is the claimant's: other writes
        into it are dropped, so the file holds there exactly what the digest will see. The
        claimant may receive and write the next bytes while another thread hashes these."""
        with self._lock:
            self._check_write(offset, data)
            floor = max(self.contiguous, self._claimed)
            if offset > floor:
                raise RuntimeError(f"claim at {offset} beyond the prefix of {self.digest} ({floor})")
            view = memoryview(data)[floor - offset :]
            if not view:
                return
            # through a fd of our own, written outside the lock (the hashing of the previous
            # claim goes on meanwhile): closing the blob's cannot pull it from under us
            fd = os.dup(self._fd)
            self._claimed = floor + len(view)
            self._writing[floor] = self._claimed  # a write failed leaves its claim unreadable
            self._drop_extents(floor, self._claimed)
        try:
            self._pwrite(fd, view, floor)
        finally:
            os.close(fd)
        with self._lock:
            del self._writing[floor]
            self._on_file = min(self._writing, default=self._claimed)
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is reading any more
            self._loop.call_soon_threadsafe(functools.partial(self._notify, pieces=False))

    def advance_in_thread(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Second half: hash claimed bytes (``data``, as given to ``claim_in_thread``) into
        the prefix, then tell the event loop, without waiting for it, that they landed.

        The hashing holds only the prefix lock, not the writers' one: the claimant puts its
        next bytes on file meanwhile (under the writers' lock, the two took turns). Nobody
        else feeds the digest while claimed bytes wait: other writes stop at the claim."""
        with self._lock:
            if self.state is not PartialState.RUNNING:
                raise RuntimeError(f"write to a {self.state.value} blob")
        with self._prefix_lock:
            before = self.contiguous
            if before < offset:
                raise RuntimeError(f"advance at {offset} beyond the prefix of {self.digest} ({before})")
            end = min(offset + len(data), self._claimed)
            if before < end:
                self._feed_locked(memoryview(data)[before - offset : end - offset])
        with self._lock:
            if self.state is not PartialState.RUNNING:  # failed while we hashed
                raise RuntimeError(f"write to a {self.state.value} blob")
            if before < end:
                self._absorb_extents()
            pieces = self._piece_done(before, offset)
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is reading any more
            self._loop.call_soon_threadsafe(functools.partial(self._notify, pieces=pieces))

    def settle_claims_in_thread(self) -> None:
        """The claimant is done, perhaps before hashing all it claimed (its hashing failed, or
        its fetch was stopped while the hashing waited for the rate limit). Readers may have
        streamed the claimed bytes on file already, so those are the ones the digest must see:
        hash them from the file, where they stay. A claim whose write never returned is
        given up (nobody read it), so the next writer starts at the prefix, not past it."""
        with self._lock:
            if self.state is not PartialState.RUNNING or self._fd < 0 or self._claimed <= self.contiguous:
                return
            before = self.contiguous
            # hashed first: should that fail, the claim still keeps other writers out
            self._hash_file_locked(min(self._writing, default=self._claimed))
            self._writing.clear()
            self._claimed = self._on_file = 0
            self._absorb_extents()
            pieces = self._piece_done(before, before)
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is reading any more
            self._loop.call_soon_threadsafe(functools.partial(self._notify, pieces=pieces))

    def _write_sync(self, offset: int, data: bytes | bytearray | memoryview) -> bool:
        """Write under the thread lock (any thread); returns whether a piece may be complete."""
        with self._lock:
            self._check_write(offset, data)
            before = self.contiguous
            self._write_locked(offset, data)
            return self._piece_done(before, offset)

    def _check_write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if self.state is not PartialState.RUNNING or self._fd < 0:
            raise RuntimeError(f"write to a {self.state.value} blob")
        if self.size is not None and offset + len(data) > self.size:
            raise ValueError(f"write past the end of blob {self.digest}")

    @staticmethod
    def _pwrite(fd: int, view: memoryview, offset: int) -> None:
        written = 0
        while written < len(view):
            written += os.pwrite(fd, view[written:], offset + written)

    def _write_locked(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Bytes below ``contiguous`` are already on file and in the digest state: a late
        write there (a slow parent's piece after the origin fetch went past it) is dropped,
        or the file would hold bytes the digest never saw. So is a write into a range an
        in-order writer claimed (``claim_in_thread``) and has not hashed yet."""
        view = memoryview(data)
        floor = max(self.contiguous, self._claimed)
        if offset < floor:
            view = view[min(len(view), floor - offset) :]
            offset = floor
        length = len(view)
        if not length:
            return
        self._pwrite(self._fd, view, offset)
        if offset == self.contiguous:
            self._feed(view)
            self._absorb_extents()
        else:
            self._extents[offset] = max(self._extents.get(offset, 0), offset + length)

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
        """Whether ``[offset, offset+length)`` is written (the swarm serves such ranges): in
        the hashed prefix, or in a piece written beyond it that no claim has overwritten."""
        if offset + length <= self.contiguous:
            return True
        end = self._extents.get(offset)
        return end is not None and end >= offset + length

    def _feed(self, data: bytes | memoryview) -> None:
        """Advance the prefix over ``data`` (the bytes at ``contiguous``)."""
        with self._prefix_lock:
            self._feed_locked(data)

    def _feed_locked(self, data: bytes | memoryview) -> None:
        """``_feed`` with the prefix lock held by the caller.

        With pieces to hash too, the blob's digest of a large run goes to a helper thread
        while this one hashes the pieces: two SHA-256 passes over the same bytes, one after
        the other, were the critical path of an origin fetch (hashlib drops the GIL for large
        buffers, so the two run on two cores). ``contiguous`` moves only once both are done:
        whoever sees the prefix grow (``finish``, ``fail``) finds the digest over all of it."""
        if not self.piece_size:
            self._hasher.update(data)
            self.contiguous += len(data)
            return
        digest: concurrent.futures.Future[None] | None = None
        if len(data) >= PARALLEL_DIGEST_MIN:
            with contextlib.suppress(RuntimeError):  # the interpreter is shutting down: inline
                digest = _digest_pool().submit(self._hasher.update, data)
        try:
            end = self._hash_pieces(memoryview(data))
        finally:
            if digest is not None:
                digest.result()  # no helper touches the digest once the lock goes
        if digest is None:
            self._hasher.update(data)
        self.contiguous = end

    def _hash_pieces(self, view: memoryview) -> int:
        """Hash the pieces of ``view`` (the bytes at ``contiguous``); returns where it ends.
        A piece's hash is stored before the prefix covers it: whoever sees the prefix cover
        a piece finds its hash."""
        pos = self.contiguous
        while view:
            room = self.piece_size - (pos % self.piece_size)
            part, view = view[:room], view[room:]
            self._piece_hasher.update(part)
            pos += len(part)
            if pos % self.piece_size == 0 or pos == self.size:
                self.piece_hashes[(pos - 1) // self.piece_size] = self._piece_hasher.hexdigest()
                self._piece_hasher = hashlib.sha256()
        return pos

    def _absorb_extents(self) -> None:
        """Extend the prefix over extents written earlier out of order (re-reading them)."""
        while True:
            end = max((e for s, e in self._extents.items() if s <= self.contiguous < e), default=None)
            if end is None:
                break
            self._hash_file_locked(end)
        for start in [s for s, e in self._extents.items() if e <= self.contiguous]:
            del self._extents[start]

    def _hash_file_locked(self, end: int) -> None:
        """Advance the prefix to ``end`` over the bytes on file (the writers' lock held: no
        write can change them meanwhile, and none may after: they are below the prefix)."""
        for chunk in file_chunks(self._fd, self.contiguous, end, READ_CHUNK):
            self._feed(chunk)

    def _drop_extents(self, start: int, end: int) -> None:
        """A claim takes ``[start, end)``: the pieces written there are overwritten with bytes
        not hashed yet, so they are no pieces any more (not to be offered to peers, nor
        absorbed into the prefix by re-reading the file while the claim's write goes on).
        What an extent holds past the claim is still its piece's bytes."""
        for s, e in list(self._extents.items()):
            if s < end and e > start:
                del self._extents[s]
                if e > end:
                    self._extents[end] = max(self._extents.get(end, 0), e)

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
        with self._lock:  # a writer thread finishes its write first; later ones see FAILED
            self.state = PartialState.FAILED
            self.error = exc
            with self._prefix_lock:
                self.failed_prefix = (self.contiguous, self._hasher.copy())
        if not self.size_known.done():
            self.size_known.set_exception(exc)
            self.size_known.exception()  # mark retrieved: nobody may be waiting
        self._notify()
        self.close()
        self.path.unlink(missing_ok=True)

    def fsync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, -1
            if fd >= 0:
                os.close(fd)
        if fd >= 0 and self._on_close is not None:
            self._on_close(self)

    def _notify(self, *, pieces: bool = True) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        if pieces:
            self._pieces_changed.set()
            self._pieces_changed = asyncio.Event()

    # -- reader side -------------------------------------------------------------------------
    def readable_limit(self) -> int:
        """How far readers of the whole blob may read now: the last byte waits for
        verification; claimed bytes count once on file (hashed or not, they are the bytes
        the digest will see)."""
        if self.state is PartialState.VERIFIED:
            return self.contiguous
        if self.state is PartialState.FAILED:
            assert self.error is not None
            raise self.error
        return max(0, max(self.contiguous, self._on_file) - 1)

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

    async def iter_range(self, start: int, end: int) -> AsyncIterator[bytes]:
        """Yield bytes ``[start, end)`` as they become readable."""
        fd = self.open_reader()
        try:
            pos = start
            while pos < end:
                limit = await self.wait_readable(pos)
                if limit <= pos:
                    raise EOFError(f"blob {self.digest} ended at {pos}, wanted {end}")
                for chunk in file_chunks(fd, pos, min(limit, end), READ_CHUNK):
                    pos += len(chunk)
                    yield chunk
        finally:
            os.close(fd)
