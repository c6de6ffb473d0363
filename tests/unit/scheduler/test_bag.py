"""The scheduler's peer bags: O(1) add and discard, and a sample with ``rng.choices``'s draws."""

from __future__ import annotations

import random

import pytest

from shoal.scheduler.state import Bag


def bag_of(items: list[str]) -> Bag:
    bag = Bag()
    for item in items:
        bag.add(item)
    return bag


class TestSample:
    @pytest.mark.parametrize(("n", "k"), [(5, 3), (16, 12), (1000, 12), (1000, 3), (17, 16)])
    @pytest.mark.parametrize("seed", [0, 1, 42])
    def test_draws_are_choices_draws(self, n: int, k: int, seed: int) -> None:
        """Larger than ``k``: the very items (and rng state after) of ``rng.choices``, which the
        sample replaced; the scheduler's decisions depend on every draw."""
        items = [f"p{i}" for i in range(n)]
        mine, theirs = random.Random(seed), random.Random(seed)
        assert bag_of(items).sample(k, mine) == theirs.choices(items, k=k)
        assert mine.random() == theirs.random()

    @pytest.mark.parametrize("n", [0, 1, 3])
    def test_small_bag_is_all_of_it_and_draws_nothing(self, n: int) -> None:
        items = [f"p{i}" for i in range(n)]
        rng, untouched = random.Random(5), random.Random(5)
        assert bag_of(items).sample(3, rng) == items
        assert rng.random() == untouched.random()

    def test_discard_keeps_every_other_item_drawable(self) -> None:
        bag = bag_of([f"p{i}" for i in range(10)])
        for gone in ("p0", "p9", "p4", "nobody"):
            bag.discard(gone)
        assert len(bag) == 7
        drawn = set(bag.sample(200, random.Random(3)))
        assert drawn == {f"p{i}" for i in (1, 2, 3, 5, 6, 7, 8)}
