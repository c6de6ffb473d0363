"""Review of the rebalancing rule (h-review2): link counts must stay the sum of what is handed."""

from __future__ import annotations

from shoal.scheduler.state import REBALANCE_EVERY, SchedulerState

from tests.unit.scheduler.test_rebalance import join, parents, report, state, wave


def consistent(s: SchedulerState) -> None:
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


def test_a_parent_that_leaves_its_last_task_leaks_no_links() -> None:
    # a leaves its only task: its PeerRecord is dropped while 10 children still name it
    s = state(max_parents=2, max_children=100)
    handed = wave(s, 10)
    s.leave("sha256:" + "a" * 64, "a")
    for c in handed:
        report(s, c, 0.5)  # each child's answer stops naming a
    consistent(s)  # s.links still counts a's 10 links, forever


def test_a_parent_that_rejoins_before_its_children_report_does_not_go_negative() -> None:
    s = state(max_parents=2, max_children=100)
    handed = wave(s, 10)
    digest = "sha256:" + "a" * 64
    s.leave(digest, "a")
    join(s, "a", 0.2)  # a fresh PeerRecord: links 0, yet 10 children still name a
    report(s, "a", 0.2, pieces=1)
    for c in handed:
        report(s, c, 0.5, pieces=10, complete=True)  # done: they name nobody
    consistent(s)  # a.links == -10


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


def test_a_child_is_not_moved_to_a_holder_of_less_than_it_has() -> None:
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


def test_a_moved_child_counts_against_its_new_parents_recent_children() -> None:
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


def test_a_parent_that_died_and_restarted_is_not_counted_below_zero() -> None:
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
    consistent(s)
