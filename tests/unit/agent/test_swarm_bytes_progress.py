"""Bytes still arriving are progress ("slow is not stalled", ``BytesArrived``), also after a
parent that sent more left: from a review of the refused_asks rule, where a stall the download cannot see
past ends, after ``refused_asks`` refused asks beside a seed, at the registry."""

from __future__ import annotations

import asyncio

import pytest

from shoal.agent import swarm
from shoal.agent.metrics import AgentMetrics
from shoal.agent.swarm import AvoidList, SwarmConfig, SwarmDownload
from shoal.core.digest import Digest
from shoal.p2p.pieces import PieceGeometry
from shoal.p2p.protocol import PeerInfo
from shoal.p2p.ratelimit import TokenBucket
from shoal.store.testing import MemoryStore

from .swarm_fakes import FakePeers, FakeScheduler, MemoryOrigin, piece_hashes_of
from .test_swarm_download import DATA, DIGEST, DIST, FAST, ME

KiB = 1 << 10


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(swarm.download, "TICK", 0.05)


class SlowParents(FakePeers):
    """Parents whose pieces are still on the way: requests are taken, bodies keep coming
    (``sent``: body bytes so far on each parent's link), none is whole yet."""

    def __init__(self) -> None:
        super().__init__({"p1": DATA, "p2": DATA})
        self.sent: dict[str, int] = {}

    def bytes_from(self, peer_id: str, digest: Digest) -> int:
        return self.sent.get(peer_id, 0)

    def request(self, peer_id: str, digest: Digest, index: int) -> bool:
        self.requests.append((peer_id, index))
        return True


async def test_bytes_from_a_slower_parent_count_after_a_faster_one_left(store: MemoryStore) -> None:
    """p1 sent 2 MiB of a piece, then its link closed; p2 takes its place and sends 64 KiB a
    tick. The tick loop compares the sum over the current parents with the most it ever saw
    (2 MiB), so p2's bytes are not progress until they pass p1's: the download stalls with
    bytes arriving, and asks to leave the swarm (beside a seed: refused, three times, then
    the registry)."""
    scheduler = FakeScheduler(len(DATA), fetcher="f", parents=["p1"], hashes=piece_hashes_of(DATA), grant_fallback=True)
    peers = SlowParents()
    d = SwarmDownload(
        config=SwarmConfig(peer_id=ME, address=ME, token=None, rules=FAST, status_wait=0.1),
        partial=store.begin(DIGEST, len(DATA)),
        dist=DIST,
        creds=None,
        geometry=PieceGeometry.of(len(DATA)),
        scheduler=scheduler,
        peers=peers,
        origin=MemoryOrigin({DIGEST: DATA}),
        bucket=TokenBucket(0),
        avoid=AvoidList(),
        metrics=AgentMetrics(),
    )

    async def links() -> None:
        for _ in range(4):
            await asyncio.sleep(0.05)
            peers.sent["p1"] = peers.sent.get("p1", 0) + 512 * KiB
        scheduler.parents = [*scheduler.parents, PeerInfo("p2", "p2:65001", complete=True)]
        peers.sinks[DIGEST].parent_lost("p1", "connection closed inside piece 0")
        while True:  # p2: slow, not stalled
            await asyncio.sleep(0.05)
            peers.sent["p2"] = peers.sent.get("p2", 0) + 64 * KiB

    feeder = asyncio.create_task(links())
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(d.run(), 1.5)  # 2.5 stall timeouts, bytes arriving all along
    finally:
        feeder.cancel()
    assert "p2" in d.state.parents
    assert peers.sent["p2"] < peers.sent["p1"]
    assert not [r for r in scheduler.reports if r.wants_fallback]
