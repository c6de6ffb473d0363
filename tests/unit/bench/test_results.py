"""Result arithmetic and the CI checks: egress and correctness, never time."""

from __future__ import annotations

import json

import pytest
from bench.fleet.bounds import kumar_ross_uniform
from bench.fleet.origin import blob_bytes_served
from bench.fleet.runner import check_results
from bench.fleet.scenarios.base import NodeOutcome, ScenarioResult

F = 64 << 20


def result(name: str, egress: int | None, times: list[float | None]) -> ScenarioResult:
    r = ScenarioResult(
        scenario=name,
        nodes=len(times),
        image_bytes=F,
        node_bps=200_000_000,
        origin_bps=200_000_000,
        heterogeneous=False,
        bound=kumar_ross_uniform(F, len(times), 200_000_000, 200_000_000),
        origin_egress_bytes=egress,
    )
    r.outcomes = [
        NodeOutcome(f"n{i}", t, t is not None, None if t is not None else "timed out") for i, t in enumerate(times)
    ]
    return r


class TestScenarioResult:
    """Slowest, percentiles and the ratio to the bound."""

    def test_stats(self) -> None:
        r = result("p2p", F, [1.0, 2.0, 3.0, 4.0, 10.0])
        assert r.slowest == 10.0
        assert r.percentile(0.5) == 3.0
        assert r.ratio == pytest.approx(10.0 / r.bound.seconds)
        assert r.egress_ratio == 1.0

    def test_a_failed_node_means_no_completion_time(self) -> None:
        r = result("direct", 2 * F, [1.0, None])
        assert r.slowest is None
        assert r.ratio is None

    def test_killed_nodes_are_not_measured(self) -> None:
        r = result("p2p", F, [1.0, 2.0])
        r.outcomes.append(NodeOutcome("n2", None, False, "agent killed", killed=True))
        assert r.slowest == 2.0
        assert not r.failures


class TestChecks:
    """What --small fails on."""

    def test_good_results_pass(self) -> None:
        good = [
            result("direct", 3 * F, [1.0, 2.0, 3.0]),
            result("source", 3 * F, [1.0, 2.0, 3.0]),
            result("p2p", F, [1.0, 1.0, 1.0]),
            result("bittorrent", 2 * F, [1.0, 1.0, 1.0]),
        ]
        assert check_results(good, kills=False) == []

    @pytest.mark.parametrize(
        ("name", "egress", "times", "needle"),
        [
            ("p2p", F + 1, [1.0, 1.0], "want 1.00x"),
            ("direct", F, [1.0, 1.0], "want N x image"),
            ("bittorrent", F - 1, [1.0], "less than one copy"),
            ("p2p", F, [1.0, None], "timed out"),
            ("source", None, [1.0], "not measured"),
        ],
    )
    def test_wrong_results_fail(self, name: str, egress: int | None, times: list[float | None], needle: str) -> None:
        problems = check_results([result(name, egress, times)], kills=False)
        assert any(needle in p for p in problems), problems

    def test_kills_relax_the_egress_check(self) -> None:
        assert check_results([result("p2p", 2 * F, [1.0])], kills=True) == []


class TestRegistryLog:
    """Only GETs of blobs count as origin egress."""

    def test_counts_blob_gets(self) -> None:
        def line(method: str, uri: str, written: int) -> str:
            return json.dumps(
                {
                    "http.request.method": method,
                    "http.request.uri": uri,
                    "http.response.written": written,
                    "msg": "response completed",
                }
            )

        lines = [
            line("GET", "/v2/bench/app/blobs/sha256:aa", 100),
            line("HEAD", "/v2/bench/app/manifests/latest", 900),
            line("GET", "/v2/bench/app/manifests/latest", 900),
            line("PATCH", "/v2/bench/app/blobs/uploads/x", 0),
            line("GET", "/v2/bench/app/blobs/sha256:bb", 23),
            "not json http.response.written",
        ]
        assert blob_bytes_served(lines) == 123


def test_agent_flags_pass_through_the_command_line() -> None:
    from bench.fleet.__main__ import _parser

    args = _parser().parse_args(["--agent-arg=--max-parents=8", "--agent-arg=--piece-timeout=10s"])
    assert args.agent_arg == ["--max-parents=8", "--piece-timeout=10s"]
    assert _parser().parse_args([]).agent_arg == []
