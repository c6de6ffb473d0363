"""Which piece to request next from a given parent.

Two needs pull in different directions. Fleet throughput needs diversity: if every child
asks the origin fetcher for the same next piece, the children hold the same pieces and
have nothing to trade, so the fetcher's upload link carries the whole rollout. The
runtime's in-order read wants the pieces just ahead of it. The rule:

1. pieces in the window ahead of the reader come first, nearest first, but only when at
   least two of our parents hold them (then asking for them does not pile onto the one
   peer that has them);
2. otherwise the rarest piece among our parents, ties broken by a per-node salt, so
   different nodes fetch different pieces from the same parent and then trade them.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Collection, Sequence


@functools.lru_cache(maxsize=1 << 16)
def salted_order(salt: str, index: int) -> bytes:
    """A per-node pseudo-random ranking of piece indexes (stable for one node and blob)."""
    return hashlib.blake2b(f"{salt}:{index}".encode(), digest_size=8).digest()


def next_piece(
    *,
    parent_has: Sequence[bool],
    missing: Collection[int],
    in_flight: Collection[int],
    availability: Sequence[int],
    read_piece: int,
    window: int = 4,
    salt: str = "",
) -> int | None:
    """The piece to ask ``parent`` for, or None if it has nothing we still need.

    Args:
        parent_has: one flag per piece: does this parent hold it.
        missing: pieces we do not hold yet.
        in_flight: pieces already being fetched from some parent.
        availability: per piece, how many of our parents hold it.
        read_piece: the piece the local reader waits for next.
        window: how many pieces from ``read_piece`` on are wanted in order.
        salt: this node's tie-breaker (its peer id and the blob digest).
    """
    wanted = [i for i in missing if i not in in_flight and i < len(parent_has) and parent_has[i]]
    if not wanted:
        return None

    def avail(i: int) -> int:
        return availability[i] if i < len(availability) else 0

    urgent = [i for i in wanted if read_piece <= i < read_piece + window and avail(i) >= 2]
    if urgent:
        return min(urgent)
    rarest = min(avail(i) for i in wanted)
    return min((i for i in wanted if avail(i) == rarest), key=lambda i: salted_order(salt, i))
