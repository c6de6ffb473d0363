"""HTTP ``Range`` header parsing for blobs: one byte range, or a clear refusal."""

from __future__ import annotations

import re
from dataclasses import dataclass

from shoal.oci.errors import DistributionError, ErrorCode

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True, slots=True)
class ByteRange:
    """A resolved, satisfiable range ``[start, end]`` (inclusive) of a blob of ``size`` bytes."""

    start: int
    end: int
    size: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end}/{self.size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """Resolve a ``Range`` header against a blob size.

    Returns None when there is no header (serve everything). Raises DistributionError with
    RANGE_INVALID (400) for malformed or multi-range headers and RANGE_NOT_SATISFIABLE (416)
    for ranges outside the blob.
    """
    if header is None:
        return None
    text = header.strip().replace(" ", "")
    if "," in text:
        raise DistributionError(ErrorCode.RANGE_INVALID, "multiple ranges are not supported: ask for one")
    match = _RANGE_RE.fullmatch(text)
    if match is None or match.groups() == ("", ""):
        raise DistributionError(ErrorCode.RANGE_INVALID, f"malformed Range header {header[:80]!r}")
    first, last = match.groups()
    unsatisfiable = DistributionError(
        ErrorCode.RANGE_NOT_SATISFIABLE,
        f"range {header[:80]!r} is outside a blob of {size} bytes",
        headers={"Content-Range": f"bytes */{size}"},
    )
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise unsatisfiable
        return ByteRange(max(0, size - suffix), size - 1, size)
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if last != "" and int(last) < start:
        raise DistributionError(ErrorCode.RANGE_INVALID, f"malformed Range header {header[:80]!r}")
    if start >= size:
        raise unsatisfiable
    return ByteRange(start, end, size)
