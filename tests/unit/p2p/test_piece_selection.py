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
            ({"has": "1111", "missing": {0, 1, 2, 3}, "avail": [2] * 4}, 0),
            ({"has": "0111", "missing": {0, 1, 2, 3}, "avail": [2] * 4}, 1),
            ({"has": "1111", "missing": {0, 1, 2, 3}, "in_flight": {0}, "avail": [2] * 4}, 1),
            ({"has": "1111", "missing": set()}, None),
            ({"has": "0000", "missing": {0, 1}}, None),
            ({"has": "1100", "missing": {2, 3}}, None),
            # beyond the reader's window: rarest first
            ({"has": "11111111", "missing": {5, 6, 7}, "avail": [3, 3, 3, 3, 3, 3, 1, 2], "read": 0}, 6),
            # inside the window, order beats rarity when two parents hold the piece
            ({"has": "11111111", "missing": {2, 3, 7}, "avail": [5, 5, 5, 5, 5, 5, 5, 1], "read": 2}, 2),
            # a window piece only one parent holds does not beat a rarer... equally rare one by order:
            # both are candidates and the node's salt decides (tested below)
        ],
    )
    def test_table(self, kwargs: dict[str, object], expected: int | None) -> None:
        assert pick(**kwargs) == expected  # type: ignore[arg-type]

    def test_equally_rare_pieces_are_spread_over_nodes(self) -> None:
        """Ten children asking the one fetcher for one of 16 pieces do not all pick the same."""
        choices = {
            next_piece(
                parent_has=[True] * 16,
                missing=set(range(16)),
                in_flight=set(),
                availability=[1] * 16,
                read_piece=0,
                salt=f"10.0.0.{n}:65001/sha256:x",
            )
            for n in range(10)
        }
        assert len(choices) >= 6

    def test_salt_makes_the_choice_stable(self) -> None:
        kwargs = {"parent_has": [True] * 8, "missing": set(range(8)), "in_flight": set(), "availability": [1] * 8}
        first = next_piece(read_piece=0, salt="a", **kwargs)  # type: ignore[arg-type]
        assert all(next_piece(read_piece=0, salt="a", **kwargs) == first for _ in range(5))  # type: ignore[arg-type]
