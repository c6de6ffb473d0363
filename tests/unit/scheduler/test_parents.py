"""Parent policies as pure functions, over tables of candidates."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.scheduler.config import ConfigError, SchedulerConfig
from shoal.scheduler.policy import PARENT_POLICIES, Candidate
from shoal.scheduler.policy.parents import choose_parents
from shoal.scheduler.policy.random_parents import choose_parents as choose_random


def c(peer_id: str, pieces: int = 0, complete: bool = False, children: int = 0) -> Candidate:
    return Candidate(peer_id, pieces, complete, children)


class TestLeastLoaded:
    """Light load first; then complete, then more pieces; loaded parents only as a last resort."""

    @pytest.mark.parametrize(
        ("candidates", "limit", "want"),
        [
            ([], 3, []),
            ([c("a", 5)], 0, []),
            ([c("a", 1), c("b", 9), c("c", 5)], 2, ["b", "c"]),
            ([c("a", 9), c("s", 0, complete=True)], 1, ["s"]),
            ([c("s", complete=True, children=3), c("a", 2, children=0)], 1, ["a"]),
            ([c("busy", 9, children=8), c("idle", 1, children=0)], 2, ["idle", "busy"]),
            ([c("busy", 9, complete=True, children=8)], 1, ["busy"]),
            ([c("x", 3, children=9), c("y", 3, children=8), c("z", 1, children=7)], 3, ["z", "y", "x"]),
            ([c("a", 4, children=2), c("b", 4, children=1), c("c", 4, children=3)], 2, ["b", "a"]),
        ],
    )
    def test_order(self, candidates: list[Candidate], limit: int, want: list[str]) -> None:
        assert choose_parents(candidates, limit=limit, max_children=8, rng=random.Random(1)) == want

    def test_ties_are_spread_at_random(self) -> None:
        same = [c(f"p{i}", 4) for i in range(5)]
        firsts = Counter(
            choose_parents(same, limit=1, max_children=8, rng=random.Random(seed))[0] for seed in range(500)
        )
        assert set(firsts) == {f"p{i}" for i in range(5)}
        assert min(firsts.values()) > 60


def key_sorted(candidates: list[Candidate], limit: int, max_children: int, rng: random.Random) -> list[str]:
    """The policy's rule written as a stable sort by a key function (the plain statement of it)."""
    tiebreak = {c.peer_id: rng.random() for c in candidates}
    ranked = sorted(
        candidates,
        key=lambda c: (
            not c.same_zone,
            c.children >= max_children,
            c.pieces == 0 and not c.complete,
            c.children,
            not c.complete,
            -c.pieces,
            tiebreak[c.peer_id],
        ),
    )
    return [c.peer_id for c in ranked[:limit]]


class TestLeastLoadedEqualsKeySort:
    """The policy builds its sort keys without a key function (it runs on every join): the
    same picks, in the same order, with the same draws from ``rng`` as the plain key sort."""

    @settings(max_examples=300, deadline=None)
    @given(
        table=st.lists(st.tuples(st.integers(0, 3), st.booleans(), st.integers(0, 10), st.booleans()), max_size=40),
        limit=st.integers(1, 6),
        seed=st.integers(0, 1000),
    )
    def test_same_picks(self, table: list[tuple[int, bool, int, bool]], limit: int, seed: int) -> None:
        candidates = [
            Candidate(f"p{i}", pieces, complete, children, same_zone)
            for i, (pieces, complete, children, same_zone) in enumerate(table)
        ]
        mine, theirs = random.Random(seed), random.Random(seed)
        assert choose_parents(candidates, limit=limit, max_children=8, rng=mine) == key_sorted(
            candidates, limit, 8, theirs
        )
        assert mine.random() == theirs.random()

    def test_equal_keys_keep_their_order(self) -> None:
        class Constant(random.Random):
            def random(self) -> float:
                return 0.5

        same = [c(f"p{5 - i}", 4) for i in range(6)]  # not in the order of their names
        assert choose_parents(same, limit=6, max_children=8, rng=Constant()) == [f"p{5 - i}" for i in range(6)]


class TestRandom:
    """The baseline policy: a uniform sample, no duplicates."""

    @pytest.mark.parametrize(("n", "limit"), [(0, 3), (2, 3), (10, 3), (10, 0)])
    def test_sizes(self, n: int, limit: int) -> None:
        got = choose_random([c(f"p{i}") for i in range(n)], limit=limit, max_children=8, rng=random.Random(3))
        assert len(got) == min(n, limit)
        assert len(set(got)) == len(got)

    def test_ignores_load(self) -> None:
        picks = Counter(
            choose_random([c("busy", children=50), c("idle")], limit=1, max_children=8, rng=random.Random(s))[0]
            for s in range(200)
        )
        assert picks["busy"] > 50


class TestByName:
    """Policies are picked by name; an unknown name fails when the config is built."""

    def test_known_names(self) -> None:
        assert set(PARENT_POLICIES) == {"least-loaded", "random"}
        assert SchedulerConfig(parent_policy="random").parent_policy == "random"

    def test_unknown_name(self) -> None:
        with pytest.raises(ConfigError, match="parent_policy must be one of least-loaded, random"):
            SchedulerConfig(parent_policy="fastest")

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"listen": "nope"},
            {"lease_ttl": 0},
            {"max_parents": 0},
            {"max_children": 0},
            {"peer_token": ""},
            {"peer_token": "t", "insecure_no_peer_auth": True},
            {"max_blob_size": 0},
            {"max_blob_size": 1 << 53},
            {"max_tasks": 0},
        ],
    )
    def test_bad_config(self, kwargs: dict[str, object]) -> None:
        with pytest.raises(ConfigError):
            SchedulerConfig(**kwargs)  # type: ignore[arg-type]
