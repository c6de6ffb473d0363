"""``protocol.dumps`` / ``loads``: the scheduler's fast JSON codec writes what ``json.dumps(to_json(...))`` writes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shoal.p2p.protocol import (
    HashesView,
    JoinRequest,
    PeerInfo,
    Report,
    Stats,
    TaskView,
    dumps,
    from_json,
    loads,
    to_json,
)

OBJECTS: list[Any] = [
    TaskView("fetcher", [PeerInfo("a", "10.0.0.1:65001", True, 3), PeerInfo("é", "h:1")], 10, 1, 2.5, "a", 4),
    TaskView("peer", [], 0, 1, 10.0),
    HashesView(2, ["ab" * 32], 7),
    JoinRequest("a", "h:1", 5, 1, 2, True),
    Report("a", "h:1", 1, 2, True, {0: "x", 12: "y"}, ["b"], 5, 1, True),
    Stats(1, 2, 3, 4, 5),
]


class TestDumps:
    """Every protocol dataclass comes out as the document the stdlib path writes, and back as itself."""

    @pytest.mark.parametrize("obj", OBJECTS, ids=lambda o: type(o).__name__)
    def test_same_document_as_the_stdlib(self, obj: Any) -> None:
        expected = to_json(obj)
        if isinstance(obj, Report):
            expected["hashes"] = {str(k): v for k, v in obj.hashes.items()}  # JSON keys are strings
        assert json.loads(dumps(obj)) == expected

    @pytest.mark.parametrize("obj", OBJECTS, ids=lambda o: type(o).__name__)
    def test_round_trip(self, obj: Any) -> None:
        assert from_json(type(obj), loads(dumps(obj))) == obj


class TestLoads:
    """Whatever is not JSON is a ValueError (the server turns it into a 400), never another exception."""

    @pytest.mark.parametrize(
        "body",
        [b"", b"not json", b"NaN", b"1e400", b"1" + b"0" * 5000, b'"\xff"', b'"\\ud800"', b"[" * 2000 + b"]" * 2000],
        ids=["empty", "text", "nan", "1e400", "5000-digits", "bad-utf8", "lone-surrogate", "deep"],
    )
    def test_refusals_are_value_errors(self, body: bytes) -> None:
        with pytest.raises(ValueError):  # noqa: PT011 - the type is the contract
            loads(body)

    def test_integers_past_64_bits_are_floats(self) -> None:
        """So a body's 2**64 reaches the parsers as a float, refused as "want an integer"."""
        assert loads(b"18446744073709551615") == 2**64 - 1
        assert isinstance(loads(b"18446744073709551616"), float)


class TestAnswersFromANewerScheduler:
    """Mid-upgrade, a newer scheduler's answer may carry fields this agent does not know:
    they are left out (refusing the answer sent every pull to the registry)."""

    def test_unknown_fields_are_left_out(self) -> None:
        from shoal.p2p.scheduler_client import _task_view

        view = _task_view(
            {
                "role": "peer",
                "parents": [],
                "size": 10,
                "piece_size": 1,
                "lease_ttl": 15.0,
                "fallback": True,
                "something_new": {"x": 1},
            }
        )
        assert view.fallback is True
        assert view.size == 10
