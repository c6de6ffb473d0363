"""The ``random`` parent policy: any candidates, uniformly. A baseline to compare ``least-loaded`` with."""

from __future__ import annotations

import random
from collections.abc import Sequence

from shoal.scheduler.policy.base import Candidate


def choose_parents(candidates: Sequence[Candidate], *, limit: int, max_children: int, rng: random.Random) -> list[str]:
    if limit <= 0:
        return []
    picked = rng.sample(list(candidates), min(limit, len(candidates)))
    return [c.peer_id for c in picked]
