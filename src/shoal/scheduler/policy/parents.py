"""The default parent policy, ``least-loaded``: lightly loaded parents first, children spread.

Parents in the downloader's zone come before any other; below the child cap, those holding
pieces come before those that hold none yet (a joiner is a parent for later: it pushes what it
gets). A parent's load is the number of children the scheduler handed it recently (over all blobs:
upload bandwidth belongs to the node, not the blob). Among equally loaded parents, complete
ones come first, then those holding more pieces; remaining ties are broken at random so that
a wave of joiners does not all land on the same peer. A parent already at ``max_children``
is only handed out when no parent below the cap is left (a downloader with a loaded parent
still beats one with none: it can pipeline from the origin fetcher).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from shoal.scheduler.policy.base import Candidate


def choose_parents(candidates: Sequence[Candidate], *, limit: int, max_children: int, rng: random.Random) -> list[str]:
    if limit <= 0:
        return []
    draw = rng.random
    tiebreak = {c.peer_id: draw() for c in candidates}
    # sort keys built by unpacking each candidate (no key function, no attribute lookups:
    # this runs for every join); the position keeps equal keys in their order, as a stable
    # sort by the key alone would
    ranked = sorted(
        [
            (
                not same_zone,
                children >= max_children,
                pieces == 0 and not complete,
                children,
                not complete,
                -pieces,
                tiebreak[peer_id],
                position,
                peer_id,
            )
            for position, (peer_id, pieces, complete, children, same_zone) in enumerate(candidates)
        ]
    )
    return [key[-1] for key in ranked[:limit]]
