"""Which piece to request next from a given parent.

Two needs pull in different directions: the runtime reads the blob in order, so pieces
just ahead of the read position should come first (the stream never starves); and rare
pieces should spread, so parents don't all hold the same prefix. The window ahead of the
reader goes first, nearest first; beyond the window, rarest first (ties: lowest index).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence


def next_piece(
    *,
    parent_has: Sequence[bool],
    missing: Collection[int],
    in_flight: Collection[int],
    availability: Sequence[int],
    read_piece: int,
    window: int = 8,
) -> int | None:
    """The piece to ask ``parent`` for, or None if it has nothing we still need.

    Args:
        parent_has: one flag per piece: does this parent hold it.
        missing: pieces we do not hold yet.
        in_flight: pieces already being fetched from some parent.
        availability: per piece, how many known parents hold it.
        read_piece: the piece the slowest local reader waits for.
        window: how many pieces from ``read_piece`` on are fetched in order.
    """
    wanted = [i for i in missing if i not in in_flight and i < len(parent_has) and parent_has[i]]
    if not wanted:
        return None
    urgent = [i for i in wanted if read_piece <= i < read_piece + window]
    if urgent:
        return min(urgent)
    return min(wanted, key=lambda i: (availability[i] if i < len(availability) else 0, i))
