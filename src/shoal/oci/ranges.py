"""HTTP ``Range`` header parsing for blobs (RFC 9110 section 14.2): one byte range, or a clear refusal.

Every path that answers a blob request (a cached file, a download in flight, a passthrough)
resolves ``Range`` here and nowhere else, so they all give the same answer to the same header.
The grammar is the RFC's, strictly: ``bytes=FIRST-LAST``, ``bytes=FIRST-`` or ``bytes=-SUFFIX``,
the unit case-insensitive, ASCII digits only (``str.isdigit`` also takes other scripts' digits)
and at most ``MAX_DIGITS`` of them, no whitespace inside the range. A header longer than
``MAX_HEADER`` is refused before it is looked at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shoal.oci.errors import DistributionError, ErrorCode

MAX_DIGITS = 19
"""enough for any file (10**19 > 2**63); more is an attack or a bug, never a blob offset"""
MAX_HEADER = 128
_RANGE_RE = re.compile(rf"bytes=([0-9]{{0,{MAX_DIGITS}}})-([0-9]{{0,{MAX_DIGITS}}})", re.IGNORECASE | re.ASCII)


@dataclass(frozen=True, slots=True)
class ByteRange:
    """A resolved, satisfiable range ``[start, end]`` (inclusive) of a blob of ``size`` bytes."""

    start: int
    end: int
    size: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    @property
    def stop(self) -> int:
        """One past the last byte: ``[start, stop)``."""
        return self.end + 1

    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end}/{self.size}"


def _malformed(header: str) -> DistributionError:
    return DistributionError(ErrorCode.RANGE_INVALID, f"malformed Range header {header[:40]!r}")


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """Resolve a ``Range`` header against a blob size.

    Returns None when there is no header (serve everything). Raises DistributionError with
    RANGE_INVALID (400) for malformed or multi-range headers and RANGE_NOT_SATISFIABLE (416)
    for ranges outside the blob.
    """
    if header is None:
        return None
    if len(header) > MAX_HEADER:
        raise _malformed(header)
    text = header.strip(" \t")  # OWS around the field value only (RFC 9110 section 5.5)
    if "," in text:
        raise DistributionError(ErrorCode.RANGE_INVALID, "multiple ranges are not supported: ask for one")
    match = _RANGE_RE.fullmatch(text)
    if match is None or match.groups() == ("", ""):
        raise _malformed(header)
    first, last = match.groups()
    unsatisfiable = DistributionError(
        ErrorCode.RANGE_NOT_SATISFIABLE,
        f"range {header[:40]!r} is outside a blob of {size} bytes",
        headers={"Content-Range": f"bytes */{size}"},
    )
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise unsatisfiable
        return ByteRange(max(0, size - suffix), size - 1, size)
    start = int(first)
    if last != "" and int(last) < start:
        raise _malformed(header)
    if start >= size:
        raise unsatisfiable
    end = size - 1 if last == "" else min(int(last), size - 1)
    return ByteRange(start, end, size)
