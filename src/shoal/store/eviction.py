"""Cache eviction policy: expire by last access (TTL), then least-recently-used to a size cap.

A plain function over a snapshot of the index, so it is tested without a disk.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CacheEntry:
    size: int
    last_access: float


@dataclass(frozen=True, slots=True)
class EvictionPlan:
    expired: list[str]
    over_size: list[str]

    @property
    def all(self) -> list[str]:
        return self.expired + self.over_size


def plan_eviction(
    entries: Mapping[str, CacheEntry],
    *,
    now: float,
    ttl: float,
    max_size: int | None,
    incoming: int = 0,
    pinned: Collection[str] = (),
) -> EvictionPlan:
    """Which entries to delete so nothing is older than ``ttl`` and ``incoming`` more bytes fit.

    Pinned entries (being read right now) are never chosen. Entries are evicted oldest access
    first. If even evicting everything unpinned cannot make room, the plan evicts all of it
    and the caller decides not to cache the incoming blob.
    """
    expired = sorted(
        (k for k, e in entries.items() if now - e.last_access > ttl and k not in pinned),
        key=lambda k: entries[k].last_access,
    )
    over_size: list[str] = []
    if max_size is not None:
        gone = set(expired)
        total = sum(e.size for k, e in entries.items() if k not in gone) + incoming
        candidates = sorted(
            (k for k in entries if k not in gone and k not in pinned),
            key=lambda k: entries[k].last_access,
        )
        for key in candidates:
            if total <= max_size:
                break
            over_size.append(key)
            total -= entries[key].size
    return EvictionPlan(expired, over_size)
