"""Request bodies and parameters: every absurd value is a BadRequest saying which field (defect 7 of issue 9)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.p2p.protocol import JoinRequest, Report, from_json
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

MiB = 1 << 20
JOIN = {"peer_id": "a", "address": "10.0.0.1:65001", "size": 4 * MiB, "piece_size": MiB}
REPORT = {"peer_id": "a", "address": "10.0.0.1:65001", "pieces": 1, "contiguous": MiB}


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**base, **changes}


class TestJoin:
    def test_a_good_join(self) -> None:
        req = parse_join(with_(JOIN, pieces=2, complete=False))
        assert (req.size, req.piece_size, req.pieces) == (4 * MiB, MiB, 2)

    @pytest.mark.parametrize(
        ("field", "value", "message"),
        [
            ("size", 1e20, "integer"),
            ("size", 4.0 * MiB, "integer"),
            ("size", True, "integer"),
            ("size", -1, "0.."),
            ("size", 10**20, "0.."),
            ("size", "4194304", "integer"),
            ("size", None, "integer"),
            ("size", [1], "integer"),
            ("piece_size", 0, "1.."),
            ("pieces", -5, "0.."),
            ("pieces", 2**64, "0.."),
            pytest.param("pieces", 10**5000, "bits", id="pieces-10**5000"),
            ("complete", 1, "true or false"),
            ("complete", "yes", "true or false"),
            ("peer_id", "", "non-empty"),
            ("peer_id", "p" * (MAX_ID + 1), "at most"),
            ("peer_id", 7, "string"),
            ("peer_id", "a\nforged log line", "printable"),
            ("peer_id", "a b", "printable"),
            ("peer_id", "pé", "printable"),
            ("address", "h" * 300 + ":1", "at most"),
            ("address", "host", "HOST:PORT"),
            ("address", "host:0", "HOST:PORT"),
            ("address", "host:65536", "HOST:PORT"),
            ("address", "host:١٢", "printable"),
            ("address", "host:" + "9" * 5000, "at most"),
        ],
    )
    def test_absurd_values(self, field: str, value: Any, message: str) -> None:
        with pytest.raises(BadRequest, match=message) as info:
            parse_join(with_(JOIN, **{field: value}))
        assert field in str(info.value)

    @pytest.mark.parametrize("body", [None, [], "x", 3, {"peer_id": "a"}, with_(JOIN, extra=1)])
    def test_wrong_shapes(self, body: Any) -> None:
        with pytest.raises(BadRequest):
            parse_join(body)


class TestReport:
    def test_a_good_report(self) -> None:
        rep = parse_report(with_(REPORT, hashes={"0": "0" * 64, "12": "1" * 64}, failed_parents=["b"]))
        assert (rep.hashes, rep.failed_parents) == ({0: "0" * 64, 12: "1" * 64}, ["b"])

    @pytest.mark.parametrize(
        ("field", "value", "message"),
        [
            ("contiguous", MAX_INT + 1, "contiguous"),
            ("contiguous", 1.5, "contiguous"),
            ("size", -1, "size"),
            ("piece_size", False, "piece_size"),
            ("hashes", [], "hashes"),
            ("hashes", {"-1": "0" * 64}, "indexes"),
            ("hashes", {"+1": "0" * 64}, "indexes"),
            ("hashes", {" 1": "0" * 64}, "indexes"),
            ("hashes", {"1_0": "0" * 64}, "indexes"),
            ("hashes", {"01": "0" * 64}, "indexes"),
            ("hashes", {"١": "0" * 64}, "indexes"),
            ("hashes", {"9" * 5000: "0" * 64}, "indexes"),
            ("hashes", {"0": 5}, "string"),
            ("hashes", {str(i): "0" * 64 for i in range(MAX_HASHES + 1)}, "at most"),
            ("failed_parents", "b", "list"),
            ("failed_parents", [1], "string"),
            ("failed_parents", [""], "non-empty"),
            ("failed_parents", ["x" * 1000], "at most"),
            ("failed_parents", ["x\r\n"], "printable"),
            ("failed_parents", ["p"] * (MAX_FAILED_PARENTS + 1), "at most"),
        ],
    )
    def test_absurd_values(self, field: str, value: Any, message: str) -> None:
        with pytest.raises(BadRequest, match=message):
            parse_report(with_(REPORT, **{field: value}))


class TestLeaveAndQuery:
    @pytest.mark.parametrize("body", [None, [], {"peer_id": 3}, {"peer_id": ""}, {"peer_id": "a", "x": 1}])
    def test_bad_leave(self, body: Any) -> None:
        with pytest.raises(BadRequest):
            parse_leave(body)

    def test_query(self) -> None:
        assert parse_hashes_query({}, 30.0) == (0, 0.0)
        assert parse_hashes_query({"from": "12", "wait": "2.5"}, 30.0) == (12, 2.5)
        assert parse_hashes_query({"wait": "999"}, 30.0) == (0, 30.0)

    @pytest.mark.parametrize(
        "query",
        [{"from": "-1"}, {"from": "x"}, {"from": "9" * 5000}, {"from": "١"}, {"wait": "nan"}, {"wait": "inf"},
         {"wait": "-1"}, {"wait": "1e9"}, {"wait": ""}],
    )  # fmt: skip
    def test_bad_query(self, query: dict[str, str]) -> None:
        with pytest.raises(BadRequest):
            parse_hashes_query(query, 30.0)


JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
JSON_VALUES = st.recursive(
    JSON_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
)


def bodies(good: dict[str, Any], names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """The good body with some fields dropped and some replaced by arbitrary JSON (or plausible values)."""
    plausible = {
        "hashes": st.dictionaries(st.sampled_from(["0", "7", "01", "-1", "x"]), st.text(max_size=3), max_size=3),
        "failed_parents": st.lists(st.sampled_from(["b", "", "a b", 3]), max_size=3),
    }
    values = {name: JSON_VALUES | plausible.get(name, st.integers(-2, 10 * MiB)) for name in names}
    changes = st.fixed_dictionaries({}, optional={**values, "extra": JSON_VALUES})
    dropped = st.sets(st.sampled_from(sorted(good)))
    return st.builds(lambda c, d: {k: v for k, v in {**good, **c}.items() if k not in d}, changes, dropped)


class TestSameAsTheGenericDecoder:
    """The direct join and report parsers build what ``protocol.from_json`` builds, and refuse whatever it refuses."""

    @staticmethod
    def check(parse: Callable[[Any], Any], cls: type[Any], body: dict[str, Any]) -> None:
        try:
            reference = from_json(cls, body)
        except ValueError:
            with pytest.raises(BadRequest):
                parse(body)
            return
        try:
            parsed = parse(body)
        except BadRequest:
            return  # a value of the right type, out of bounds
        assert parsed == reference

    @settings(max_examples=400, deadline=None)
    @given(bodies(JOIN, [f.name for f in fields(JoinRequest)]))
    def test_join(self, body: dict[str, Any]) -> None:
        self.check(parse_join, JoinRequest, body)

    @settings(max_examples=400, deadline=None)
    @given(bodies(REPORT, [f.name for f in fields(Report)]))
    def test_report(self, body: dict[str, Any]) -> None:
        self.check(parse_report, Report, body)

    def test_a_full_report(self) -> None:
        body = with_(REPORT, complete=True, hashes={"3": "a" * 64}, failed_parents=["b"], size=MiB, piece_size=MiB)
        assert parse_report(with_(body, bad_hashes=True)) == from_json(Report, with_(body, bad_hashes=True))
