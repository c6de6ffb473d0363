"""How many peer ids one node certificate may speak as: a node is one peer, not a crowd.

A certificate binds a caller to its node's addresses but not to a port, so without a bound
one compromised node could join every task under many ``IP:PORT`` ids: take several of a
blob's fallback leases, stand in for many parents, fill the agent list that ``shoal
preheat`` sends credentials to. An agent uses one id (its advertise address); two at once
leave room for a restart on another port.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["PeerIds"]


class PeerIds:
    """Peer ids each node spoke as within ``ttl``; one more than ``limit`` is refused.

    Parameters:
        limit: ids one node may use at once.
        ttl: seconds after its last use that an id no longer counts.
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(self, limit: int = 2, ttl: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.ttl = ttl
        self.clock = clock
        self._seen: dict[str, dict[str, float]] = {}

    def admit(self, node: str, peer_id: str) -> str | None:
        """Record that ``node`` speaks as ``peer_id``; why it may not, or None."""
        now = self.clock()
        ids = self._seen.setdefault(node, {})
        if peer_id not in ids:
            for old in [i for i, seen in ids.items() if now - seen >= self.ttl]:
                del ids[old]
            if len(ids) >= self.limit:
                return f"node {node} already speaks as {', '.join(sorted(ids))}: at most {self.limit} peer ids per node"
        ids[peer_id] = now
        return None
