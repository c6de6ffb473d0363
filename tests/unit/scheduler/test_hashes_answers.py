"""The hashes long-poll's answers: rendered once for every waiting peer, never stale."""

from __future__ import annotations

import orjson

from shoal.p2p.protocol import JoinRequest, Report
from shoal.scheduler.config import SchedulerConfig
from shoal.scheduler.server import Scheduler

D = "sha256:" + "a" * 64
MiB = 1 << 20


def h(i: int) -> str:
    return f"{i:064x}"


def publish(scheduler: Scheduler, now: float, hashes: dict[int, str]) -> None:
    rep = Report("a", "a:1", len(hashes), 0, hashes=hashes, size=10 * MiB, piece_size=MiB)
    scheduler.state.report(D, rep, now)


class TestRenderHashes:
    def test_one_body_per_answer_and_a_new_one_per_new_hash(self) -> None:
        scheduler = Scheduler(SchedulerConfig(insecure_no_peer_auth=True))
        scheduler.state.join(D, JoinRequest("a", "a:1", 10 * MiB, MiB), 0)
        publish(scheduler, 1, {0: h(0)})
        first = scheduler.render_hashes(D, scheduler.state.hashes(D, 0))
        assert scheduler.render_hashes(D, scheduler.state.hashes(D, 0)) is first
        assert orjson.loads(first) == {"start": 0, "hashes": [h(0)], "total": 10}
        waiting = scheduler.render_hashes(D, scheduler.state.hashes(D, 1))
        assert orjson.loads(waiting)["hashes"] == []
        publish(scheduler, 2, {1: h(1)})
        assert orjson.loads(scheduler.render_hashes(D, scheduler.state.hashes(D, 0)))["hashes"] == [h(0), h(1)]
        assert orjson.loads(scheduler.render_hashes(D, scheduler.state.hashes(D, 1)))["hashes"] == [h(1)]

    def test_each_blob_its_own_body(self) -> None:
        scheduler = Scheduler(SchedulerConfig(insecure_no_peer_auth=True))
        other = "sha256:" + "b" * 64
        for digest, peer, value in ((D, "a", h(7)), (other, "b", h(8))):
            scheduler.state.join(digest, JoinRequest(peer, f"{peer}:1", 10 * MiB, MiB), 0)
            rep = Report(peer, f"{peer}:1", 1, MiB, hashes={0: value}, size=10 * MiB, piece_size=MiB)
            scheduler.state.report(digest, rep, 1)
        assert orjson.loads(scheduler.render_hashes(D, scheduler.state.hashes(D, 0)))["hashes"] == [h(7)]
        assert orjson.loads(scheduler.render_hashes(other, scheduler.state.hashes(other, 0)))["hashes"] == [h(8)]
