"""The scheduler's request parsers and state machine under hostile bodies.

Parsers give a value or ``BadRequest``; the state gives an answer or ``StateError``; and
whatever was accepted, every task stays within its bounds: the agents' piece size, a size
of at most ``max_blob_size``, at most one hash per piece, hashes only from lease holders.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from shoal.p2p.pieces import choose_piece_size, piece_count
from shoal.scheduler.config import SchedulerConfig
from shoal.scheduler.requests import (
    MAX_FAILED_PARENTS,
    MAX_HASHES,
    MAX_ID,
    MAX_INT,
    BadRequest,
    parse_hashes_query,
    parse_join,
    parse_leave,
    parse_report,
)
from shoal.scheduler.state import SchedulerState, StateError

from .harness import counted, fuzzed
from .strategies import bodies, json_values

MiB = 1 << 20
SIZE = 4 * MiB
JOIN = {"peer_id": "a", "address": "10.0.0.1:65001", "size": SIZE, "piece_size": MiB, "pieces": 0, "complete": False}
REPORT = {
    "peer_id": "a",
    "address": "10.0.0.1:65001",
    "pieces": 1,
    "contiguous": MiB,
    "complete": False,
    "hashes": {"0": "0" * 64},
    "failed_parents": ["b"],
    "size": SIZE,
    "piece_size": MiB,
    "bad_hashes": False,
}
DIGESTS = [f"sha256:{i:064x}" for i in range(3)]
PEERS = ["a", "b", "c"]


@fuzzed
@given(bodies(JOIN))
@counted("scheduler join body")
def test_join_body(body: Any) -> None:
    try:
        req = parse_join(body)
    except BadRequest:
        return
    assert 0 < len(req.peer_id) <= MAX_ID
    assert 0 < len(req.address) <= MAX_ID
    assert 0 <= req.size <= MAX_INT
    assert 1 <= req.piece_size <= MAX_INT
    assert 0 <= req.pieces <= MAX_INT
    assert isinstance(req.complete, bool)


@fuzzed
@given(bodies(REPORT))
@counted("scheduler report body")
def test_report_body(body: Any) -> None:
    try:
        rep = parse_report(body)
    except BadRequest:
        return
    assert len(rep.hashes) <= MAX_HASHES
    assert len(rep.failed_parents) <= MAX_FAILED_PARENTS
    assert all(type(k) is int and 0 <= k <= MAX_INT and isinstance(v, str) for k, v in rep.hashes.items())
    assert all(0 < len(p) <= MAX_ID for p in rep.failed_parents)
    for n in (rep.pieces, rep.contiguous, rep.size, rep.piece_size):
        assert type(n) is int
        assert 0 <= n <= MAX_INT


@fuzzed
@given(json_values)
@counted("scheduler leave body")
def test_leave_body(body: Any) -> None:
    try:
        peer_id = parse_leave(body)
    except BadRequest:
        return
    assert body == {"peer_id": peer_id}
    assert 0 < len(peer_id) <= MAX_ID


@fuzzed
@given(st.dictionaries(st.sampled_from(["from", "wait", "x"]), st.text(max_size=30), max_size=3))
@counted("scheduler hashes query")
def test_hashes_query(query: dict[str, str]) -> None:
    try:
        start, wait = parse_hashes_query(query, 30.0)
    except BadRequest:
        return
    assert start >= 0
    assert 0.0 <= wait <= 30.0


def check_invariants(state: SchedulerState) -> None:
    for task in state.tasks.values():
        assert 0 <= task.size <= state.config.max_blob_size
        assert task.piece_size == choose_piece_size(task.size)
        assert task.total == piece_count(task.size, task.piece_size)
        assert len(task.hashes) in (0, task.total)
        assert task.hashes_known == sum(v is not None for v in task.hashes)
        assert task.holder is None or task.holder in task.members
    assert len(state.tasks) <= state.config.max_tasks


calls = st.lists(
    st.tuples(
        st.sampled_from(["join", "report", "leave", "hashes", "expire"]),
        st.sampled_from(DIGESTS),
        st.sampled_from(PEERS),
        bodies(JOIN) | bodies(REPORT),
        st.floats(0, 5),
    ),
    max_size=25,
)


@fuzzed
@given(calls)
@counted("scheduler state sequences")
def test_state_stays_bounded(ops: list[tuple[str, str, str, Any, float]]) -> None:
    """Any sequence of accepted calls: answers or StateError, and only a holder's hashes count."""
    state = SchedulerState(SchedulerConfig(max_blob_size=1 << 30, max_tasks=2), rng=random.Random(0))
    now = 0.0
    for kind, digest, peer, body, step in ops:
        now += step
        if isinstance(body, dict) and "peer_id" in body:
            body = {**body, "peer_id": peer}
        task = state.tasks.get(digest)
        holder, known = (task.holder, list(task.hashes)) if task is not None else (None, [])
        try:
            if kind == "join":
                state.join(digest, parse_join(body), now)
            elif kind == "report":
                state.report(digest, parse_report(body), now)
            elif kind == "leave":
                state.leave(digest, peer)
            elif kind == "hashes":
                view = state.hashes(digest, 0)
                assert None not in view.hashes
            else:
                state.expire(now)
        except (BadRequest, StateError):
            pass
        after = state.tasks.get(digest)
        if after is not None and any(after.hashes) and after.hashes != known:
            assert (kind, holder) == ("report", peer), "hashes set by a peer that did not hold the lease"
        check_invariants(state)
