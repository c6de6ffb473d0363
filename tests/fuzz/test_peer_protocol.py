"""The peer protocol's decoders: ``from_json`` of every message and ``decode_bitfield``.

Both raise only ``ValueError`` on bad input; what they accept has the declared types and
encodes back to the same value.
"""

from __future__ import annotations

import base64
import json
from dataclasses import fields
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from shoal.p2p.protocol import (
    HashesView,
    JoinRequest,
    PeerInfo,
    PeerStatus,
    Report,
    Stats,
    TaskView,
    decode_bitfield,
    encode_bitfield,
    from_json,
    to_json,
)

from .harness import counted, fuzzed
from .strategies import ABSURD, bodies, json_values

MESSAGES: list[type[Any]] = [JoinRequest, Report, TaskView, HashesView, PeerStatus, PeerInfo, Stats]
VALID: dict[type[Any], dict[str, Any]] = {
    JoinRequest: to_json(JoinRequest("a", "h:1", 10, 1)),
    Report: to_json(Report("a", "h:1", 1, 1, hashes={0: "0" * 64}, failed_parents=["b"])),
    TaskView: to_json(TaskView("fetcher", [PeerInfo("b", "h:2", True, 3)], 10, 1, 15.0, "a", 2)),
    HashesView: to_json(HashesView(0, ["0" * 64], 1)),
    PeerStatus: to_json(PeerStatus(10, 1, encode_bitfield([True] * 10), True, 10)),
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
@example((PeerStatus, {**VALID[PeerStatus], "bitfield": 5}))
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


@fuzzed
@given(st.lists(st.booleans(), max_size=300))
@counted("protocol bitfield round trip")
def test_bitfield_round_trip(bits: list[bool]) -> None:
    assert decode_bitfield(encode_bitfield(bits), len(bits)) == bits


texts = (
    st.text(max_size=60)
    | st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode())
    | st.sampled_from([v for v in ABSURD if isinstance(v, str)])
)


@fuzzed
@given(texts | json_values, st.integers(-5, 400))
@example("=", 0)
@example("", -1)
@example("AA==", -1)
@example("é", 3)
@example(5, 3)
@counted("protocol bitfield decode")
def test_bitfield_decode(text: Any, count: int) -> None:
    try:
        bits = decode_bitfield(text, count)
    except ValueError:
        return
    assert len(bits) == count
    assert all(isinstance(b, bool) for b in bits)
    assert decode_bitfield(encode_bitfield(bits), count) == bits
