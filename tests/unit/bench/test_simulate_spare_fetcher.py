"""In the simulator, the agent's ``NodeFetches`` reaches the cores: while two nodes fetch
blobs from the origin, each takes few pieces of the other's blob from it (only at the
start, before any piece came from another parent)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from bench.simulate import shoal_node
from bench.simulate.fleet import FleetSpec, build_fleet
from bench.simulate.network import Transfer
from bench.simulate.shoal_fleet import ShoalFleet
from bench.simulate.shoal_node import Blob, SimAgent
from bench.simulate.world import World

from shoal.agent.swarm.fetches import NodeFetches

MIB = 1 << 20


def copies_while_fetching(monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """Pieces a fetching node sent while fetching: (to nodes fetching nothing, to fetchers)."""
    spec = FleetSpec(nodes=10, size=96 * MIB, layers=3, bandwidth=12.5e6, origin_bandwidth=12.5e6, seed=1)
    world = World(build_fleet(spec))
    fleet = ShoalFleet(world, seed=1)
    sent = [0, 0]
    request = SimAgent.request

    def counted(
        agent: SimAgent, child: int, blob: Blob, index: int, arrived: Callable[[], None], rejected: Callable[[], None]
    ) -> Transfer | None:
        transfer = request(agent, child, blob, index, arrived, rejected)
        mine = agent.downloads[blob.digest]
        if transfer is not None and mine.hashing and not mine.done:
            other = fleet.services.agents[child].downloads.values()
            sent[any(d.hashing and not d.done for d in other)] += 1
        return transfer

    monkeypatch.setattr(shoal_node.SimAgent, "request", counted)
    fleet.start()
    world.run(600.0)
    assert len(world.done_at) == 10
    return sent[0], sent[1]


def test_a_fetcher_s_copies_go_to_nodes_that_fetch_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    to_others, to_fetchers = copies_while_fetching(monkeypatch)
    assert to_fetchers <= 30  # 23: the first pieces, before a relay had any
    assert to_others > 150  # two copies of most of the 96 pieces


def test_without_the_news_the_fetchers_feed_each_other(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: with the node's downloads deaf to each other's fetches, the
    fetchers take each other's new pieces."""
    monkeypatch.setattr(NodeFetches, "_tell", lambda self: None)
    _, to_fetchers = copies_while_fetching(monkeypatch)
    assert to_fetchers > 60
