"""Churn: which nodes die, and when (drawn from the seed, spread over the expected rollout)."""

from __future__ import annotations

import random
from collections.abc import Callable

from bench.simulate.world import World


def schedule_deaths(world: World, fraction: float, horizon: float, seed: int, on_death: Callable[[int], None]) -> None:
    """Kill ``round(fraction * N)`` random nodes at uniform times in ``(0, horizon)``."""
    if fraction <= 0:
        return
    rng = random.Random(f"churn/{seed}")
    nodes = list(world.nodes)
    victims = rng.sample(nodes, round(fraction * len(nodes)))
    for node in victims:
        when = rng.uniform(0.05, 0.95) * horizon

        def die(node: int = node) -> None:
            world.dead.add(node)  # done or not: its uploads stop, and it is no survivor
            world.net.kill(node)
            on_death(node)

        world.timers.at(when, die)
