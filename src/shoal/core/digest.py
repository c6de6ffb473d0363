"""Content digests (`algorithm:hex`), validated strictly because they become file names."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"^(sha256|sha512):([0-9a-f]+)$")


class DigestError(ValueError):
    """A string that is not a well-formed, supported digest."""


@dataclass(frozen=True, slots=True)
class Digest:
    """A validated content digest such as ``sha256:9f86…``."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        match = _DIGEST_RE.fullmatch(text)
        if match is None:
            raise DigestError(f"invalid digest {text[:80]!r}: want sha256:<64 hex> or sha512:<128 hex>")
        algorithm, hexpart = match.groups()
        if len(hexpart) != _HEX_LENGTH[algorithm]:
            raise DigestError(f"invalid digest {text[:80]!r}: {algorithm} needs {_HEX_LENGTH[algorithm]} hex digits")
        return cls(algorithm, hexpart)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self) -> hashlib._Hash:
        """A fresh incremental hasher of this digest's algorithm."""
        return hashlib.new(self.algorithm)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"
