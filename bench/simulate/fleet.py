"""The fleet a rollout runs on: caps, zones, the image's layers, who dies when.

Node 0 is the origin registry; nodes ``1..N`` pull the image. Slow nodes and zones are
drawn from the seed, so a run is reproducible.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from shoal.p2p.pieces import choose_piece_size


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """What the command line describes. Rates are bytes per second, sizes bytes."""

    nodes: int
    size: int
    layers: int
    bandwidth: float
    origin_bandwidth: float
    slow_fraction: float = 0.0
    slow_factor: float = 1.0
    churn: float = 0.0
    zones: int = 1
    cross_zone_bandwidth: float | None = None
    latency: float = 0.0005
    """one-way seconds between two nodes of one zone (control messages and the last byte)"""
    cross_zone_latency: float = 0.002
    seed: int = 0

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.size < 1 or not 1 <= self.layers <= self.size:
            raise ValueError("want --nodes >= 1, --size >= 1 byte and 1 <= --layers <= size")
        if self.bandwidth <= 0 or self.origin_bandwidth <= 0:
            raise ValueError("want --bandwidth and --origin-bandwidth > 0")
        if not 0 <= self.slow_fraction <= 1 or self.slow_factor < 1:
            raise ValueError("want 0 <= --slow-fraction <= 1 and --slow-factor >= 1")
        if not 0 <= self.churn < 1 or self.zones < 1:
            raise ValueError("want 0 <= --churn < 1 and --zones >= 1")


@dataclass(frozen=True, slots=True)
class Fleet:
    spec: FleetSpec
    up: list[float]
    """per node (index 0: the origin)"""
    down: list[float]
    zone: list[int]
    layers: list[int]
    """each layer's size"""
    slow: frozenset[int]

    @property
    def piece_sizes(self) -> list[int]:
        """The agents' piece size of each layer (:func:`shoal.p2p.pieces.choose_piece_size`)."""
        return [choose_piece_size(s) for s in self.layers]


def build_fleet(spec: FleetSpec) -> Fleet:
    rng = random.Random(f"fleet/{spec.seed}")
    n = spec.nodes
    slow = frozenset(rng.sample(range(1, n + 1), round(spec.slow_fraction * n)))
    rates = [spec.origin_bandwidth] + [
        spec.bandwidth / spec.slow_factor if i in slow else spec.bandwidth for i in range(1, n + 1)
    ]
    # nodes are spread evenly over the zones (then shuffled); the origin is in none (-1): its
    # bytes are origin egress, not cross-zone copies, and no zone's cap applies to them
    zone = [-1] + [i % spec.zones for i in range(n)]
    tail = zone[1:]
    rng.shuffle(tail)
    zone[1:] = tail
    base, extra = divmod(spec.size, spec.layers)
    layers = [base + (1 if i < extra else 0) for i in range(spec.layers)]
    return Fleet(spec, rates, list(rates), zone, layers, slow)
