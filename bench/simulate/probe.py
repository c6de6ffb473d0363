"""``--probe SECONDS``: the network's state every so often, one line each on stderr.

Every session that asked "where does the time go" wrote this sampler again in a throwaway
script: how busy the fleet's uploads are (the bound's terms tie when every line is equal, so
an idle upload second is lost), how many uploads idle, and how many flows a node sends and
receives at once (a piece crosses a hop at about one such share of a line). It reads the
network only: a probed run's rollout is the run without the probe (its steps count the
probe's timers too).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from bench.simulate.world import World


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    upload_busy: float
    """bytes per second the nodes send, over what they could (the origin left out)"""
    uploads_under_half: float
    """share of nodes sending at under half their upload"""
    flows_out: float
    """median flows a sending node sends on"""
    flows_in: float
    """median flows into a node that receives any"""

    def line(self) -> str:
        return (
            f"probe t={self.at:6.2f} upload busy {self.upload_busy:4.0%}, under half {self.uploads_under_half:4.0%};"
            f" flows out (median of senders) {self.flows_out:g}, in {self.flows_in:g}"
        )


def sample(world: World) -> Sample:
    """The network as it is now (rates as of its last recomputation)."""
    net = world.net
    nodes = np.arange(1, world.fleet.spec.nodes + 1)
    live = np.array([n not in world.dead for n in nodes.tolist()], dtype=bool)
    nodes = nodes[live]
    cap = net.capacity[nodes]
    sent = net.used[nodes]
    slots = np.flatnonzero(net.active & (net.rate > 0))
    out = np.bincount(net.res[slots, 0], minlength=net.n)[nodes]
    into = np.bincount(net.res[slots, 1] - net.n, minlength=net.n)[nodes]
    return Sample(
        at=world.clock.now,
        upload_busy=float(sent.sum() / cap.sum()) if nodes.size else 0.0,
        uploads_under_half=float((sent < cap / 2).mean()) if nodes.size else 0.0,
        flows_out=float(np.median(out[out > 0])) if (out > 0).any() else 0.0,
        flows_in=float(np.median(into[into > 0])) if (into > 0).any() else 0.0,
    )


def start_probe(world: World, every: float, out: TextIO | None = None) -> list[Sample]:
    """Sample every ``every`` virtual seconds until the rollout ends; each line printed to
    ``out`` (stderr by default) as it is taken. Returns the list the samples are added to."""
    if every <= 0:
        raise ValueError(f"probe interval must be > 0, not {every}")
    samples: list[Sample] = []
    stream = out if out is not None else sys.stderr

    def tick() -> None:
        if world.finished():
            return
        s = sample(world)
        samples.append(s)
        print(s.line(), file=stream, flush=True)
        world.timers.after(every, tick)

    world.timers.after(every, tick)
    return samples
