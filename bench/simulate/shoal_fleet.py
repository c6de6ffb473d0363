"""A fleet of simulated Shoal agents and their scheduler replicas, wired to one world."""

from __future__ import annotations

import random
from functools import partial

from bench.simulate.scheduler import Replicas
from bench.simulate.shoal_node import DEAD_LINK_NOTICED, Services, SimAgent, make_blob
from bench.simulate.world import World
from shoal.p2p import download_state as ds
from shoal.scheduler.config import SchedulerConfig

START_SPREAD = 0.2
"""seconds over which the nodes' pulls start (a rollout's pods do not start in one instant);
``--start-spread`` sets another (the lab's layer downloads start over 0.5-0.7 s)"""


class ShoalFleet:
    def __init__(
        self,
        world: World,
        *,
        replicas: int = 1,
        seed: int = 0,
        config: SchedulerConfig | None = None,
        rules: ds.DownloadRules | None = None,
        start_spread: float = START_SPREAD,
    ) -> None:
        self.world = world
        self.start_spread = start_spread
        self.rng = random.Random(f"shoal/{seed}")
        config = config or SchedulerConfig(insecure_no_peer_auth=True)
        self.schedulers = Replicas(world, replicas, config, seed)
        self.services = Services()
        self.services.world = world
        self.services.scheduler = self.schedulers
        self.services.agents = {}
        self.services.peer_ids = {}
        rules = rules or ds.DownloadRules()
        for node in world.nodes:
            agent = SimAgent(node, self.services, rules, self._done)
            self.services.agents[node] = agent
            self.services.peer_ids[agent.peer_id] = node
        fleet = world.fleet
        self.blobs = [
            make_blob(i, size, ps) for i, (size, ps) in enumerate(zip(fleet.layers, fleet.piece_sizes, strict=True))
        ]

    def start(self) -> None:
        self.schedulers.start()
        for agent in self.services.agents.values():
            self.world.timers.at(self.rng.uniform(0, self.start_spread), partial(agent.pull, self.blobs))

    def kill(self, node: int) -> None:
        """``node`` died (the network dropped its transfers): its links close at once on the
        serving side (``PeerHub`` forgets the child), and its children notice the broken link."""
        peer_id = f"n{node}"
        for agent in self.services.agents.values():
            if agent.node in self.world.dead:
                continue
            agent.serving.gone(node)
            for download in agent.downloads.values():
                if peer_id in download.state.parents:
                    lost = ds.ParentLost(peer_id, "link closed")
                    self.world.timers.after(DEAD_LINK_NOTICED, partial(download.apply, lost))

    def _done(self, node: int) -> None:
        self.world.done_at.setdefault(node, self.world.clock.now)
