"""Review of moved parents (h-review2)."""

from __future__ import annotations

from shoal.p2p.download_state import MOVED, AddParent, CancelRequest, DropParent, ParentHas

from tests.unit.p2p.test_download_state import new, requests, with_parents


def test_a_moved_parents_piece_in_flight_is_cancelled() -> None:
    """The moved-from parent is healthy and the heaviest: its queued piece must not be sent
    for nothing (the child re-asks it elsewhere; NOT_INTERESTED does not empty the queue)."""
    s = new(max_parents=2)
    with_parents(s, 1, 3)
    assert requests(s.apply(ParentHas("p1", frozenset({5})))) == [("p1", 5)]
    out = with_parents(s, 3, 2)
    assert DropParent("p1", MOVED) in out
    assert CancelRequest("p1", 5) in out


def test_an_answer_after_failover_naming_one_of_ours_keeps_the_others() -> None:
    """A new replica hands fresh parents; naming one of ours by chance (a popular seeder) is
    no move: the scheduler's rule moves one parent at a time, yet every working parent it does
    not know is dropped here at once."""
    s = new(max_parents=3)
    with_parents(s, 1, 2, 3)
    out = with_parents(s, 1, 4, 5)
    dropped = [a for a in out if isinstance(a, DropParent)]
    added = [a for a in out if isinstance(a, AddParent)]
    assert len(dropped) <= 1 and len(added) <= 1, (dropped, added)


def test_a_move_unloads_the_old_parent_even_below_max_parents() -> None:
    """The scheduler counts the link to the old parent as gone the moment it stops naming it;
    a download with fewer than max_parents (few holders when it joined, or a parent lost)
    takes the new one and keeps the old, still loading the heavy parent the scheduler now
    thinks is lighter."""
    s = new(max_parents=3)
    with_parents(s, 1, 2)
    out = with_parents(s, 1, 3)  # the scheduler moved us from p2 to p3
    assert DropParent("p2", MOVED) in out
    assert set(s.parents) == {"p1", "p3"}
