"""One simulated rollout's shared parts: the clock, the timers, the network, who is done or dead."""

from __future__ import annotations

from collections.abc import Callable

from bench.simulate.clock import Clock, Timers
from bench.simulate.fleet import Fleet
from bench.simulate.network import Network

ORIGIN = 0


class World:
    """Parameters:
    fleet: caps, zones and layers.
    rate_interval, batch: the network's recomputation interval and delivery batch (seconds).
    """

    def __init__(
        self, fleet: Fleet, *, rate_interval: float = 0.005, batch: float = 0.001, upload_slots: int | None = None
    ) -> None:
        spec = fleet.spec
        self.fleet = fleet
        self.clock = Clock()
        self.timers = Timers(self.clock)
        self.net = Network(
            self.clock,
            fleet.up,
            fleet.down,
            fleet.zone,
            spec.cross_zone_bandwidth,
            rate_interval=rate_interval,
            batch=batch,
            upload_slots=upload_slots,
        )
        self.done_at: dict[int, float] = {}
        self.dead: set[int] = set()
        self.events = 0

    @property
    def nodes(self) -> range:
        return range(1, self.fleet.spec.nodes + 1)

    def latency(self, a: int, b: int) -> float:
        spec = self.fleet.spec
        return spec.latency if self.fleet.zone[a] == self.fleet.zone[b] else spec.cross_zone_latency

    def message(self, src: int, dst: int, deliver: Callable[[], None]) -> None:
        """A control message from ``src`` to ``dst``: delivered after the link's latency, if both live."""

        def arrive() -> None:
            if src not in self.dead and dst not in self.dead:
                deliver()

        self.timers.after(self.latency(src, dst), arrive)

    def finished(self) -> bool:
        return len(self.done_at) + len(self.dead - self.done_at.keys()) >= self.fleet.spec.nodes

    def run(self, until: float) -> None:
        """Run timers and the network in time order until everyone is done or dead, or ``until``."""
        timers, net = self.timers, self.net
        while not self.finished():
            t_timer = timers.next_time()
            t_net = net.next_time()
            t = min(t_timer, t_net)
            if t == float("inf") or t > until:
                break
            if t_net <= t_timer:
                self.clock.now = max(self.clock.now, t_net)
                net.step(self.clock.now)
            else:
                timers.run_due(t_timer)
            self.events += 1
