"""A lease taken from a silent holder is counted on /metrics by why (the dashboard's lease moves)."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer

from shoal.scheduler.config import SchedulerConfig
from shoal.scheduler.server import Scheduler

DIGEST = "sha256:" + "a" * 64
MiB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def body(peer: str) -> dict[str, object]:
    return {"peer_id": peer, "address": f"{peer}:1", "size": 4 * MiB, "piece_size": MiB}


def report(peer: str) -> dict[str, object]:
    return {"peer_id": peer, "address": f"{peer}:1", "pieces": 0, "contiguous": 0, "size": 4 * MiB, "piece_size": MiB}


class TestLeaseMoveMetric:
    """shoal_scheduler_lease_moves_total{reason} counts moves, not first grants."""

    async def test_move_counted_with_its_reason(self) -> None:
        clock = Clock()
        scheduler = Scheduler(SchedulerConfig(listen="127.0.0.1:0", peer_token="t", lease_ttl=5.0), clock=clock)
        headers = {"Authorization": "Bearer t"}
        async with TestClient(TestServer(scheduler.build_app())) as client:
            first = await (await client.post(f"/v1/tasks/{DIGEST}/join", json=body("a"), headers=headers)).json()
            assert first["role"] == "fetcher"
            await client.post(f"/v1/tasks/{DIGEST}/join", json=body("b"), headers=headers)
            clock.now = 6.0  # a stopped reporting: b's next report takes the lease
            moved = await (await client.post(f"/v1/tasks/{DIGEST}/report", json=report("b"), headers=headers)).json()
            assert moved["role"] == "fetcher"
            text = await (await client.get("/metrics")).text()
        assert 'shoal_scheduler_lease_moves_total{reason="no report"} 1.0' in text
        assert "shoal_scheduler_lease_changes_total 2.0" in text
