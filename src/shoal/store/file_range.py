"""Reading a byte range of a cache file in chunks, with ``os.pread`` (no shared offset: the
same descriptor may be read by several threads and writers at once)."""

from __future__ import annotations

import os
from collections.abc import Iterator

__all__ = ["file_chunks"]


def file_chunks(fd: int, start: int, stop: int, chunk: int) -> Iterator[bytes]:
    """``[start, stop)`` of the file, at most ``chunk`` bytes at a time; a file shorter than
    ``stop`` is an ``OSError``, never a short answer."""
    pos = start
    while pos < stop:
        data = os.pread(fd, min(chunk, stop - pos), pos)
        if not data:
            raise OSError(f"short read at {pos} of {stop} (fd {fd})")
        pos += len(data)
        yield data
