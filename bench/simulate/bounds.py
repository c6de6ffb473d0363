"""The Kumar-Ross lower bound of a simulated fleet (heterogeneous caps included).

The formula lives in :mod:`bench.fleet.bounds` (bits per second there); the simulator's
rates are bytes per second.
"""

from __future__ import annotations

from collections.abc import Sequence

from bench.fleet.bounds import LowerBound, kumar_ross


def fleet_bound(size: int, origin_up: float, node_up: Sequence[float], node_down: Sequence[float]) -> LowerBound:
    """``max(F/u_origin, F/d_min, N*F/(u_origin + sum u_node))``; rates in bytes per second."""
    return kumar_ross(size, origin_up * 8, [u * 8 for u in node_up], [d * 8 for d in node_down])
