"""The scheduler protocol's decoder: ``from_json`` of every message.

Both raise only ``ValueError`` on bad input; what they accept has the declared types and
encodes back to the same value.
"""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from shoal.p2p.protocol import (
    HashesView,
    JoinRequest,
    PeerInfo,
    Report,
    Stats,
    TaskView,
    from_json,
    to_json,
)

from .harness import counted, fuzzed
from .strategies import bodies

MESSAGES: list[type[Any]] = [JoinRequest, Report, TaskView, HashesView, PeerInfo, Stats]
VALID: dict[type[Any], dict[str, Any]] = {
    JoinRequest: to_json(JoinRequest("a", "h:1", 10, 1)),
    Report: to_json(Report("a", "h:1", 1, 1, hashes={0: "0" * 64}, failed_parents=["b"])),
    TaskView: to_json(TaskView("fetcher", [PeerInfo("b", "h:2", True, 3)], 10, 1, 15.0, "a", 2)),
    HashesView: to_json(HashesView(0, ["0" * 64], 1)),
    PeerInfo: to_json(PeerInfo("b", "h:2")),
    Stats: to_json(Stats.empty()),
}


def wire(obj: Any) -> Any:
    """As a peer would receive it: through JSON text."""
    return json.loads(json.dumps(to_json(obj)))


cases = st.sampled_from(MESSAGES).flatmap(
    lambda cls: st.tuples(st.just(cls), bodies(json.loads(json.dumps(VALID[cls]))))
)


@fuzzed
@given(cases)
@example((Report, {**VALID[Report], "hashes": {"1_0": "x"}}))
@example((TaskView, {**VALID[TaskView], "parents": [5]}))
@counted("protocol from_json")
def test_from_json(case: tuple[type[Any], Any]) -> None:
    cls, data = case
    try:
        obj = from_json(cls, data)
    except ValueError:
        return
    assert isinstance(obj, cls)
    for f in fields(cls):
        value = getattr(obj, f.name)
        if f.type in ("int", "bool", "str", "float"):
            assert type(value).__name__ == f.type, (f.name, value)
    assert from_json(cls, wire(obj)) == obj
