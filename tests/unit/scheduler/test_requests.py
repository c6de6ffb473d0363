"""Request bodies and parameters: every absurd value is a BadRequest saying which field (defect 7 of issue 9)."""

from __future__ import annotations

from typing import Any

import pytest

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
