"""Handed parents give way to lighter ones: a peer that joined late in a wave is a parent of
few, and its upload idles while the early joiners queue many children each."""

from __future__ import annotations

import random

import pytest

from shoal.p2p.protocol import JoinRequest, Report, TaskView
from shoal.scheduler import state as state_module
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


def test_every_heavy_parent_but_one_gives_way_in_one_look(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first joiners are each other's parents and everyone's: one move per look left
    them on busy parents for the whole rollout."""
    monkeypatch.setattr(state_module, "REBALANCE_SAMPLE", 16)  # every holder is looked at
    s = state(max_parents=3, max_children=100)
    join(s, "h", 0.0)
    for p in ("a", "b", "c"):
        join(s, p, 0.0)
        report(s, p, 0.0, pieces=1)
    handed = {f"c{i}": parents(join(s, f"c{i}", 0.1)) for i in range(12)}
    assert all(set(ps) == {"a", "b", "c"} for ps in handed.values())
    for late in ("x", "y", "z", "w"):
        join(s, late, 0.2)
    now = REBALANCE_EVERY + 0.5
    report(s, "h", now)
    for p in ("a", "b", "c", "x", "y", "z", "w"):
        report(s, p, now, pieces=1)
    moved = parents(report(s, "c0", now))
    assert len(moved) == 3
    assert len(set(moved) & {"a", "b", "c"}) == 1  # two gave way; one is kept, so the
    # downloader sees an answer naming one of its parents and swaps (not a failover's)
    assert parents(report(s, "c0", now + 0.5)) == moved  # handed again until the next look
    links_exact(s)


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


def links_exact(s: SchedulerState) -> None:
    """Every peer's links is the number of downloaders naming it; the total is their sum."""
    counted: dict[str, int] = {}
    for task in s.tasks.values():
        for member in task.members.values():
            for p in member.handed:
                counted[p] = counted.get(p, 0) + 1
    for peer_id, peer in s.peers.items():
        assert peer.links >= 0, (peer_id, peer.links)
        assert peer.links == counted.get(peer_id, 0), (peer_id, peer.links, counted.get(peer_id, 0))
    assert s.links == sum(p.links for p in s.peers.values())


def test_a_parent_that_leaves_its_last_task_leaves_no_links_counted() -> None:
    # a leaves its only task: its PeerRecord is dropped while 10 children still name it
    s = state(max_parents=2, max_children=100)
    handed = wave(s, 10)
    s.leave("sha256:" + "a" * 64, "a")
    for c in handed:
        report(s, c, 0.5)  # each child's answer stops naming a
    links_exact(s)  # s.links still counts a's 10 links, forever


def test_a_parent_that_rejoins_before_its_children_report_is_not_counted_below_zero() -> None:
    s = state(max_parents=2, max_children=100)
    handed = wave(s, 10)
    digest = "sha256:" + "a" * 64
    s.leave(digest, "a")
    join(s, "a", 0.2)  # a fresh PeerRecord: links 0, yet 10 children still name a
    report(s, "a", 0.2, pieces=1)
    for c in handed:
        report(s, c, 0.5, pieces=10, complete=True)  # done: they name nobody
    links_exact(s)  # a.links == -10


def test_no_links_are_counted_once_everyone_left() -> None:
    # b named a (a joined before b with nothing, then both reported): a's record went first,
    # so b's link to a stays in s.links for good; on a long-lived scheduler every churned
    # parent adds its links, the average rises, and heavy parents stop counting as heavy
    s = state(max_parents=2, max_children=100)
    handed = wave(s, 10)
    digest = "sha256:" + "a" * 64
    for c in handed:
        s.leave(digest, c)
    s.leave(digest, "a")
    s.leave(digest, "b")
    assert s.links == 0  # nobody names anyone now


def test_a_child_is_not_moved_to_a_holder_of_fewer_pieces_than_it_has() -> None:
    """_lighter looks at links only: a child that holds 9 of 10 pieces gives up a parent
    holding 9 for one holding 1 (and keeps it: a light parent is never moved off again)."""
    s = state(max_parents=2, max_children=100)
    handed = wave(s, 10)
    now = REBALANCE_EVERY + 0.5
    report(s, "h", now)
    for p in ("a", "b"):
        report(s, p, now, pieces=9)
    join(s, "z", now)
    report(s, "z", now, pieces=1)
    child = "c0"
    moved = parents(report(s, child, now, pieces=8))
    assert "z" not in moved, (handed[child], moved)


def test_a_moved_child_counts_in_its_new_parents_recent_children() -> None:
    """The fill's least-loaded policy ranks by children handed in child_window; a child moved
    by _lighter is not counted there, so the new parent keeps looking idle to the fill too."""
    s = state(max_parents=2, max_children=100)
    wave(s, 10)
    join(s, "z", 0.2)
    now = REBALANCE_EVERY + 0.5
    report(s, "h", now)
    for p in ("a", "b", "z"):
        report(s, p, now, pieces=1)
    before = s.peers["z"].children(now, s.config.child_window)
    assert "z" in parents(report(s, "c0", now))
    assert s.peers["z"].children(now, s.config.child_window) == before + 1


def test_a_parent_expired_and_restarted_is_not_counted_below_zero() -> None:
    """The realistic path: a dies (no reports), expire() drops it and its PeerRecord, the
    agent restarts under the same peer id and joins again before its children report."""
    s = state(max_parents=2, max_children=100)
    handed = wave(s, 10)
    ttl = s.config.peer_ttl
    later = ttl + 1.0
    for p in ("h", "b", *handed):  # a still counts as live here: the children keep it
        report(s, p, ttl - 1.0, pieces=1 if p == "b" else 0)
    s.expire(later)  # a was last seen at 0.0
    assert "a" not in s.peers
    join(s, "a", later)
    report(s, "a", later, pieces=1)
    for c in handed:
        report(s, c, later + 0.1)
    links_exact(s)


def test_a_lease_in_another_task_does_not_exempt_a_heavy_parent() -> None:
    """Only the blob's own lease holder is kept: a lease of any other blob says nothing of
    this one (and a node could hold one to keep its children everywhere)."""
    s = state(max_parents=2, max_children=100)
    other = "sha256:" + "b" * 64
    s.join(other, JoinRequest("a", "a:1", SIZE, MiB), 0.0)
    assert s.tasks[other].holder == "a"
    handed = wave(s, 10)
    assert s.tasks[D].holder == "h"
    join(s, "z", 0.2)
    now = REBALANCE_EVERY + 0.5
    s.report(other, Report("a", "a:1", pieces=1, contiguous=0, complete=False, size=SIZE, piece_size=MiB), now)
    report(s, "h", now)
    report(s, "b", now, pieces=10, complete=True)  # a seed: kept, so only a may give way
    for p in ("a", "z"):
        report(s, p, now, pieces=1)
    moved = [parents(report(s, c, now)) for c in handed]
    assert any("a" not in ps for ps in moved), moved
