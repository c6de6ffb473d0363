"""Which scheduler owns a blob: rendezvous (highest-random-weight) hashing over the list.

Every agent ranks the schedulers the same way for a given digest, so all peers of a blob
meet at the same scheduler without any coordination. When that scheduler dies, only its
blobs move (each to its own second choice, so they spread over the survivors), and the
agents re-announce there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def _weight(url: str, digest: str) -> bytes:
    return hashlib.sha256(f"{url}{digest}".encode()).digest()


def rank_schedulers(digest: str, schedulers: Sequence[str]) -> list[str]:
    """``schedulers`` best first for ``digest`` (duplicates dropped); the agent tries them in order."""
    unique = list(dict.fromkeys(schedulers))
    return sorted(unique, key=lambda url: _weight(url, digest), reverse=True)
