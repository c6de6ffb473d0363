"""Handed parents give way to lighter ones: a peer that joined late in a wave is a parent of
few, and its upload idles while the early joiners queue many children each."""

from __future__ import annotations

import random

from shoal.p2p.protocol import JoinRequest, Report, TaskView
from shoal.scheduler.config import SchedulerConfig
from shoal.scheduler.state import REBALANCE_EVERY, SchedulerState

D = "sha256:" + "a" * 64
MiB = 1 << 20
SIZE = 10 * MiB


def state(**kw: object) -> SchedulerState:
    return SchedulerState(SchedulerConfig(**kw), rng=random.Random(7))  # type: ignore[arg-type]


def join(s: SchedulerState, peer: str, now: float) -> TaskView:
    return s.join(D, JoinRequest(peer, f"{peer}:1", SIZE, MiB), now)


def report(s: SchedulerState, peer: str, now: float, *, pieces: int = 0, complete: bool = False) -> TaskView:
    rep = Report(peer, f"{peer}:1", pieces=pieces, contiguous=0, complete=complete, size=SIZE, piece_size=MiB)
    return s.report(D, rep, now)


def parents(view: TaskView) -> list[str]:
    return [p.peer_id for p in view.parents]


def wave(s: SchedulerState, children: int) -> dict[str, list[str]]:
    """The lease holder h, then a and b holding pieces, then ``children`` joiners: every
    joiner's two parents are a and b (holders of pieces come first)."""
    join(s, "h", 0.0)
    for p in ("a", "b"):
        join(s, p, 0.0)
        report(s, p, 0.0, pieces=1)
    handed = {f"c{i}": parents(join(s, f"c{i}", 0.1)) for i in range(children)}
    assert all(set(ps) == {"a", "b"} for ps in handed.values())
    return handed


def test_a_heavy_parent_gives_way_to_a_late_light_holder() -> None:
    s = state(max_parents=2, max_children=100)
    handed = wave(s, 10)
    join(s, "z", 0.2)  # joined after the wave: nobody's parent
    now = REBALANCE_EVERY + 0.5
    report(s, "h", now)
    for p in ("a", "b", "z"):
        report(s, p, now, pieces=1)
    child = "c0"
    moved = parents(report(s, child, now))
    assert "z" in moved
    assert len(moved) == 2
    assert len(set(moved) & set(handed[child])) == 1  # one parent at a time gives way
    # and not again before REBALANCE_EVERY: the answer stays
    assert parents(report(s, child, now + 0.1)) == moved


def test_the_lease_holder_and_seeds_are_not_moved_away_from() -> None:
    s = state(max_parents=1)
    join(s, "h", 0.0)
    report(s, "h", 0.0, pieces=1)
    handed = {f"c{i}": parents(join(s, f"c{i}", 0.1)) for i in range(6)}
    assert {p for ps in handed.values() for p in ps} == {"h"}
    join(s, "z", 0.2)
    now = REBALANCE_EVERY + 0.5
    report(s, "h", now, pieces=1)
    report(s, "z", now, pieces=1)
    assert parents(report(s, "c0", now)) == ["h"]  # the blob's only source: kept


def test_a_parent_is_light_again_once_its_children_are_done() -> None:
    s = state(max_parents=2, max_children=100)
    handed = wave(s, 10)
    for c in [*handed, "a", "b", "h"]:
        report(s, c, 0.5, complete=True, pieces=10)
    assert s.links == 0
    assert all(peer.links == 0 for peer in s.peers.values())
    late = parents(join(s, "z", 0.6)) + parents(join(s, "y", 0.6))
    assert s.links == len(late) == 4
    assert sum(peer.links for peer in s.peers.values()) == 4
