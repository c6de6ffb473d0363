"""Buffers for received piece bodies, used again once a piece is on file.

A new ``bytearray`` per piece is zeroed by Python and, at a MiB or more, usually faulted in
page by page by the kernel: two passes over memory per piece that the body's own read
overwrites at once. A link's reader takes a buffer here instead and fills it whole before
anyone sees it (a body cut short is an error, its buffer dropped), and the download gives it
back when the piece is written or discarded. A buffer given back is never in use: a
:class:`~shoal.agent.peer_link.PieceBody` gives its buffer back at most once, and only its
owner calls that. What is never given back is left to the garbage collector, so a lost
release costs a new buffer, not a wrong byte.

Buffers are kept by length (a piece is exactly as long as asked for), and the oldest idle
ones make room for a new one: the length of each blob's last piece, or of another blob's
piece size, is rarely asked for again, and must not hold the pool for good.
"""

from __future__ import annotations

import threading

__all__ = ["MAX_POOLED_BYTES", "MIN_POOLED_LENGTH", "PieceBuffers"]

MAX_POOLED_BYTES = 64 << 20
"""bytes of idle buffers kept for reuse, at most"""
MIN_POOLED_LENGTH = 64 << 10
"""shorter bodies get a buffer of their own: small allocations are cheap and malloc reuses them"""


class PieceBuffers:
    """Idle buffers by length, oldest first, shared by every link of an agent (any thread)."""

    def __init__(self, max_bytes: int = MAX_POOLED_BYTES, min_length: int = MIN_POOLED_LENGTH) -> None:
        self.max_bytes = max_bytes
        self.min_length = min_length
        self._idle: dict[int, bytearray] = {}
        """id -> buffer, the oldest given back first"""
        self._by_length: dict[int, dict[int, None]] = {}
        """length -> the ids of idle buffers of that length, oldest first"""
        self._bytes = 0
        self._lock = threading.Lock()
        self.reused = 0
        """buffers handed out again rather than made (a plain counter, for tests)"""

    @property
    def idle_bytes(self) -> int:
        return self._bytes

    def take(self, length: int) -> bytearray:
        """A buffer of exactly ``length`` bytes, its content undefined: the caller fills it."""
        with self._lock:
            ids = self._by_length.get(length)
            if ids:
                key = next(reversed(ids))  # the newest: the most likely still in a cache
                self.reused += 1
                return self._forget(key)
        return bytearray(length)

    def give(self, buffer: bytearray) -> None:
        """Keep ``buffer`` for a later :meth:`take` (the caller no longer uses it)."""
        length = len(buffer)
        if length < self.min_length or length > self.max_bytes:
            return
        with self._lock:
            while self._bytes + length > self.max_bytes:
                self._forget(next(iter(self._idle)))
            key = id(buffer)
            self._idle[key] = buffer
            self._by_length.setdefault(length, {})[key] = None
            self._bytes += length

    def _forget(self, key: int) -> bytearray:
        buffer = self._idle.pop(key)
        length = len(buffer)
        ids = self._by_length[length]
        del ids[key]
        if not ids:
            del self._by_length[length]
        self._bytes -= length
        return buffer
