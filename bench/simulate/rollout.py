"""Run one rollout of a policy on a fleet and summarise it."""

from __future__ import annotations

import time

from bench.simulate.bittorrent import BitTorrentSwarm
from bench.simulate.bounds import fleet_bound
from bench.simulate.churn import schedule_deaths
from bench.simulate.fleet import Fleet
from bench.simulate.probe import start_probe
from bench.simulate.result import RolloutResult, summarize
from bench.simulate.world import ORIGIN, World
from shoal.p2p.download_state import DownloadRules
from shoal.scheduler.config import SchedulerConfig

POLICIES = ("shoal", "bittorrent")


def run_rollout(
    fleet: Fleet,
    *,
    policy: str = "shoal",
    replicas: int = 1,
    scheduler_death: float | None = None,
    rate_interval: float = 0.005,
    time_limit: float | None = None,
    started: float | None = None,
    rules: DownloadRules | None = None,
    config: SchedulerConfig | None = None,
    upload_slots: int | None = None,
    start_spread: float | None = None,
    probe: float | None = None,
) -> RolloutResult:
    """Simulate ``policy`` on ``fleet`` until every survivor holds the image (or ``time_limit``);
    ``probe``: print the network's state every that many virtual seconds (``bench.simulate.probe``)."""
    started = time.monotonic() if started is None else started
    world = World(fleet, rate_interval=rate_interval, upload_slots=upload_slots)
    if probe is not None:
        start_probe(world, probe)
    nodes = list(world.nodes)
    bound = fleet_bound(
        sum(fleet.layers), fleet.up[ORIGIN], [fleet.up[n] for n in nodes], [fleet.down[n] for n in nodes]
    )
    limit = time_limit if time_limit is not None else 20 * bound.seconds + 120
    spec = fleet.spec
    cpu, calls = 0.0, 0
    if policy == "bittorrent":
        swarm = BitTorrentSwarm(world, spec.seed)
        schedule_deaths(world, spec.churn, bound.seconds, spec.seed, swarm.kill)
        swarm.start()
        world.run(limit)
    elif policy == "shoal":
        from bench.simulate.shoal_fleet import START_SPREAD, ShoalFleet

        spread = START_SPREAD if start_spread is None else start_spread
        shoal = ShoalFleet(world, replicas=replicas, seed=spec.seed, config=config, rules=rules, start_spread=spread)
        schedule_deaths(world, spec.churn, bound.seconds, spec.seed, shoal.kill)
        if scheduler_death is not None:
            world.timers.at(scheduler_death * bound.seconds, lambda: shoal.schedulers.kill(0))
        shoal.start()
        world.run(limit)
        cpu, calls = shoal.schedulers.cpu_seconds, shoal.schedulers.calls
    else:
        raise ValueError(f"policy {policy!r}: want one of {', '.join(POLICIES)}")
    return summarize(world, policy, scheduler_cpu_s=cpu, scheduler_calls=calls, wall_s=time.monotonic() - started)
