"""What a parent policy sees of each candidate, and the shape every policy has."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import NamedTuple, Protocol


class Candidate(NamedTuple):
    """A peer that could serve a downloader, as the scheduler sees it right now.

    A NamedTuple rather than a frozen dataclass: the scheduler builds a few dozen per join,
    and a tuple is several times cheaper to make.
    """

    peer_id: str
    pieces: int
    """pieces it holds (as last reported)."""
    complete: bool
    children: int
    """children assigned to it (any blob) within the scheduler's child window: its upload load."""
    same_zone: bool = True
    """in the downloader's topology zone (or either zone unknown)."""


class ParentPolicy(Protocol):
    def __call__(
        self, candidates: Sequence[Candidate], *, limit: int, max_children: int, rng: random.Random
    ) -> list[str]:
        """Up to ``limit`` peer ids from ``candidates``, best first."""
        ...
