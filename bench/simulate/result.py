"""What a rollout prints: times against the bound, origin and cross-zone bytes, scheduler CPU."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

from bench.simulate.bounds import fleet_bound
from bench.simulate.world import ORIGIN, World


@dataclass(frozen=True, slots=True)
class RolloutResult:
    policy: str
    nodes: int
    image_bytes: int
    slowest_s: float
    p50_s: float
    p90_s: float
    bound_s: float
    bound_term: str
    ratio_to_bound: float
    origin_egress_ratio: float
    cross_zone_copies: float
    finished: int
    survivors: int
    dead: int
    scheduler_cpu_s: float
    scheduler_cpu_share: float
    """scheduler CPU seconds (inside SchedulerState) / simulated rollout seconds"""
    scheduler_calls: int
    wall_s: float
    events: int
    rate_recomputations: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    world: World, policy: str, *, scheduler_cpu_s: float, scheduler_calls: int, wall_s: float
) -> RolloutResult:
    fleet = world.fleet
    image = sum(fleet.layers)
    nodes = list(world.nodes)
    survivors = [n for n in nodes if n not in world.dead]
    times = sorted(world.done_at[n] for n in survivors if n in world.done_at)
    unfinished = len(survivors) - len(times)
    slowest = float("inf") if unfinished else (times[-1] if times else 0.0)
    p50 = statistics.median(times) if times else float("inf")
    p90 = times[min(len(times) - 1, int(0.9 * len(times)))] if times else float("inf")
    bound = fleet_bound(image, fleet.up[ORIGIN], [fleet.up[n] for n in nodes], [fleet.down[n] for n in nodes])
    duration = slowest if times and not unfinished else world.clock.now
    return RolloutResult(
        policy=policy,
        nodes=len(nodes),
        image_bytes=image,
        slowest_s=round(slowest, 3),
        p50_s=round(p50, 3),
        p90_s=round(p90, 3),
        bound_s=round(bound.seconds, 3),
        bound_term=bound.binding,
        ratio_to_bound=round(slowest / bound.seconds, 3),
        origin_egress_ratio=round(float(world.net.sent_by[ORIGIN]) / image, 4),
        cross_zone_copies=round(float(world.net.cross_zone_bytes) / image, 3),
        finished=len(times),
        survivors=len(survivors),
        dead=len(world.dead),
        scheduler_cpu_s=round(scheduler_cpu_s, 3),
        scheduler_cpu_share=round(scheduler_cpu_s / duration, 4) if duration > 0 else 0.0,
        scheduler_calls=scheduler_calls,
        wall_s=round(wall_s, 1),
        events=world.events,
        rate_recomputations=world.net.recomputations,
    )
