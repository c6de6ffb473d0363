"""The short paths of an answer (a full set of unchanged parents, a lease that surely stays)
give what the full walk gives, and the links counted along the way stay those a recount finds."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.p2p.protocol import JoinRequest, Report, TaskView
from shoal.scheduler.config import SchedulerConfig
from shoal.scheduler.state import REBALANCE_EVERY, SchedulerState

DIGESTS = ("sha256:" + "a" * 64, "sha256:" + "b" * 64)
MiB = 1 << 20
SIZE = 10 * MiB


def join(s: SchedulerState, peer: str, now: float, digest: str = DIGESTS[0]) -> TaskView:
    return s.join(digest, JoinRequest(peer, f"{peer}:1", SIZE, MiB), now)


def report(
    s: SchedulerState,
    peer: str,
    now: float,
    *,
    pieces: int = 0,
    complete: bool = False,
    failed: list[str] | None = None,
    digest: str = DIGESTS[0],
) -> TaskView:
    rep = Report(
        peer,
        f"{peer}:1",
        pieces=pieces,
        contiguous=pieces * MiB,
        complete=complete,
        failed_parents=failed or [],
        size=SIZE,
        piece_size=MiB,
    )
    return s.report(digest, rep, now)


def parents(view: TaskView) -> list[str]:
    return [p.peer_id for p in view.parents]


def full_fleet(peers: int = 8) -> SchedulerState:
    """A task whose downloader ``p0`` holds a full set of parents (``max_parents`` = 2)."""
    s = SchedulerState(SchedulerConfig(max_parents=2), rng=random.Random(3))
    for i in range(peers):
        join(s, f"p{i}", 0.0)
    for i in range(1, peers):
        report(s, f"p{i}", 0.0, pieces=1)
    assert len(parents(report(s, "p0", 0.0))) == 2
    return s


class TestFullSetOfParents:
    def test_a_parent_gone_silent_is_replaced_before_the_next_look(self) -> None:
        s = full_fleet()
        ttl = s.config.peer_ttl
        first = parents(report(s, "p0", 1.0))
        silent = first[0]
        now = ttl + 0.5  # every peer but ``silent`` reports again: it alone is past peer_ttl
        for i in range(1, 8):
            if f"p{i}" != silent:
                report(s, f"p{i}", now, pieces=2)
        s.tasks[DIGESTS[0]].members["p0"].moved_at = now  # no look for lighter parents due
        again = parents(report(s, "p0", now))
        assert silent not in again
        assert len(again) == 2
        assert s.peers[silent].links == 0

    def test_a_parent_named_failed_by_another_child_is_dropped_at_once(self) -> None:
        s = full_fleet()
        named = parents(report(s, "p0", 0.5))[1]
        other = next(f"p{i}" for i in range(1, 8) if f"p{i}" != named)
        report(s, other, 0.6, pieces=1, failed=[named])
        assert 0.6 - s.tasks[DIGESTS[0]].members["p0"].moved_at < REBALANCE_EVERY
        assert named not in parents(report(s, "p0", 0.7))

    def test_unchanged_parents_are_answered_with_their_latest_progress(self) -> None:
        s = full_fleet()
        kept = parents(report(s, "p0", 0.5))
        for p in kept:
            report(s, p, 0.6, pieces=7)
        view = report(s, "p0", 0.7)
        assert parents(view) == kept
        assert [p.pieces for p in view.parents] == [7, 7]


def recount(s: SchedulerState) -> tuple[dict[str, int], dict[tuple[str, str], set[str]]]:
    """Every peer's links and every member's children, counted from the handed parents."""
    links = dict.fromkeys(s.peers, 0)
    children: dict[tuple[str, str], set[str]] = {}
    for digest, task in s.tasks.items():
        for child_id, member in task.members.items():
            assert len(member.handed) == len(set(member.handed)) <= s.config.max_parents
            for parent_id in member.handed:
                assert parent_id in task.members
                assert parent_id != child_id
                links[parent_id] += 1
                children.setdefault((digest, parent_id), set()).add(child_id)
    return links, children


OPS = st.lists(
    st.tuples(
        st.sampled_from(["join", "report", "complete", "fail", "leave", "expire"]),
        st.integers(0, 9),
        st.integers(0, 1),
        st.integers(0, 10),
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(ops=OPS, seed=st.integers(0, 100))
def test_links_and_children_stay_what_a_recount_finds(ops: list[tuple[str, int, int, int]], seed: int) -> None:
    s = SchedulerState(SchedulerConfig(max_parents=3, peer_ttl=4.0), rng=random.Random(seed))
    now = 0.0
    for op, peer_no, digest_no, pieces in ops:
        now += 0.7
        peer, digest = f"p{peer_no}", DIGESTS[digest_no]
        if op == "join":
            join(s, peer, now, digest)
        elif op == "report" and digest in s.tasks and peer in s.tasks[digest].members:
            report(s, peer, now, pieces=pieces, digest=digest)
        elif op == "complete" and digest in s.tasks and peer in s.tasks[digest].members:
            report(s, peer, now, pieces=10, complete=True, digest=digest)
        elif op == "fail" and digest in s.tasks and peer in s.tasks[digest].members:
            report(s, peer, now, pieces=pieces, failed=[f"p{pieces % 10}"], digest=digest)
        elif op == "leave":
            s.leave(digest, peer)
        elif op == "expire":
            s.expire(now)
        links, children = recount(s)
        assert {p: r.links for p, r in s.peers.items()} == links
        assert s.links == sum(links.values())
        for digest, task in s.tasks.items():
            for peer_id, member in task.members.items():
                assert member.children == children.get((digest, peer_id), set())
