"""Buffers for received piece bodies, used again once a piece is on file.

A new ``bytearray`` per piece is zeroed by Python and, at a MiB or more, usually faulted in
page by page by the kernel: two passes over memory per piece that the body's own read
overwrites at once. A link's reader takes a buffer here instead and fills it whole before
anyone sees it (a body cut short is an error, its buffer dropped), and the download gives it
back when the piece is written or discarded. A buffer given back is never in use: a
:class:`PieceBody` gives its buffer back at most once, and only its owner calls that. What is
never given back is left to the garbage collector, so a lost release costs a new buffer, not
a wrong byte.
"""

from __future__ import annotations

import threading

__all__ = ["MAX_POOLED_BYTES", "PieceBuffers"]

MAX_POOLED_BYTES = 64 << 20
"""bytes of idle buffers kept for reuse, at most (above it a buffer given back is dropped)"""


class PieceBuffers:
    """Idle buffers by length, shared by every link of an agent (any thread)."""

    def __init__(self, max_bytes: int = MAX_POOLED_BYTES) -> None:
        self.max_bytes = max_bytes
        self._free: dict[int, list[bytearray]] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.reused = 0
        """buffers handed out again rather than made (a plain counter, for tests and metrics)"""

    @property
    def idle_bytes(self) -> int:
        return self._bytes

    def take(self, length: int) -> bytearray:
        """A buffer of exactly ``length`` bytes, its content undefined: the caller fills it."""
        with self._lock:
            free = self._free.get(length)
            if free:
                self._bytes -= length
                self.reused += 1
                return free.pop()
        return bytearray(length)

    def give(self, buffer: bytearray) -> None:
        """Keep ``buffer`` for a later :meth:`take` (the caller no longer uses it)."""
        length = len(buffer)
        with self._lock:
            if self._bytes + length > self.max_bytes:
                return
            self._free.setdefault(length, []).append(buffer)
            self._bytes += length
