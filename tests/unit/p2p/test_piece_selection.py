"""Which piece to ask a parent for: in order near the reader, rarest first beyond."""

from __future__ import annotations

import pytest

from shoal.p2p.policy.piece_selection import next_piece


def pick(
    *,
    has: str,
    missing: set[int],
    in_flight: set[int] | None = None,
    avail: list[int] | None = None,
    read: int = 0,
    window: int = 4,
) -> int | None:
    return next_piece(
        parent_has=[c == "1" for c in has],
        missing=missing,
        in_flight=in_flight or set(),
        availability=avail or [1] * len(has),
        read_piece=read,
        window=window,
    )


class TestNextPiece:
    """Table of situations a downloader meets."""

    @pytest.mark.parametrize(
        ("kwargs", "expected"),
        [
            ({"has": "1111", "missing": {0, 1, 2, 3}}, 0),
            ({"has": "0111", "missing": {0, 1, 2, 3}}, 1),
            ({"has": "1111", "missing": {0, 1, 2, 3}, "in_flight": {0}}, 1),
            ({"has": "1111", "missing": set()}, None),
            ({"has": "0000", "missing": {0, 1}}, None),
            ({"has": "1100", "missing": {2, 3}}, None),
            # beyond the reader's window: rarest first
            ({"has": "11111111", "missing": {5, 6, 7}, "avail": [3, 3, 3, 3, 3, 3, 1, 2], "read": 0}, 6),
            # ties in rarity: lowest index
            ({"has": "11111111", "missing": {6, 7}, "avail": [1] * 8, "read": 0}, 6),
            # inside the window, order beats rarity
            ({"has": "11111111", "missing": {2, 3, 7}, "avail": [5, 5, 5, 5, 5, 5, 5, 1], "read": 2}, 2),
        ],
    )
    def test_table(self, kwargs: dict[str, object], expected: int | None) -> None:
        assert pick(**kwargs) == expected  # type: ignore[arg-type]
