"""plan_eviction: TTL by last access, then least recently used down to the size cap."""

from __future__ import annotations

import pytest

from shoal.store.eviction import CacheEntry, plan_eviction

E = CacheEntry


class TestPlanEviction:
    """Pure table tests: which keys go, in which order, and which never do."""

    @pytest.mark.parametrize(
        ("entries", "now", "ttl", "max_size", "incoming", "pinned", "expired", "over_size"),
        [
            # nothing to do
            ({}, 100.0, 10.0, None, 0, (), [], []),
            ({"a": E(10, 95.0)}, 100.0, 10.0, None, 0, (), [], []),
            # exactly at the TTL is kept, beyond it goes
            ({"a": E(10, 90.0)}, 100.0, 10.0, None, 0, (), [], []),
            ({"a": E(10, 89.9)}, 100.0, 10.0, None, 0, (), ["a"], []),
            # expired oldest first
            ({"a": E(1, 50.0), "b": E(1, 10.0), "c": E(1, 99.0)}, 100.0, 10.0, None, 0, (), ["b", "a"], []),
            # pinned entries never expire
            ({"a": E(1, 0.0), "b": E(1, 1.0)}, 100.0, 10.0, None, 0, {"a"}, ["b"], []),
            # under the cap: nothing
            ({"a": E(40, 1.0), "b": E(40, 2.0)}, 3.0, 100.0, 100, 20, (), [], []),
            # LRU: the least recently used goes first, only as much as needed
            ({"a": E(40, 2.0), "b": E(40, 1.0), "c": E(40, 3.0)}, 4.0, 100.0, 100, 0, (), [], ["b"]),
            ({"a": E(40, 2.0), "b": E(40, 1.0), "c": E(40, 3.0)}, 4.0, 100.0, 100, 50, (), [], ["b", "a"]),
            # expired entries count as gone before LRU is considered
            ({"old": E(60, 0.0), "a": E(30, 99.0)}, 100.0, 10.0, 100, 50, (), ["old"], []),
            # a pinned LRU candidate is skipped
            ({"a": E(40, 1.0), "b": E(40, 2.0), "c": E(40, 3.0)}, 4.0, 100.0, 100, 10, {"a"}, [], ["b"]),
            # cannot make room: everything unpinned goes; the caller decides not to cache
            ({"a": E(40, 1.0), "b": E(40, 2.0)}, 3.0, 100.0, 100, 500, {"b"}, [], ["a"]),
            # incoming alone beyond the cap
            ({"a": E(10, 1.0)}, 3.0, 100.0, 100, 101, (), [], ["a"]),
        ],
    )
    def test_plan(
        self,
        entries: dict[str, CacheEntry],
        now: float,
        ttl: float,
        max_size: int | None,
        incoming: int,
        pinned: set[str] | tuple[str, ...],
        expired: list[str],
        over_size: list[str],
    ) -> None:
        plan = plan_eviction(entries, now=now, ttl=ttl, max_size=max_size, incoming=incoming, pinned=pinned)
        assert plan.expired == expired
        assert plan.over_size == over_size
        assert plan.all == expired + over_size
        assert not set(plan.all) & set(pinned)
