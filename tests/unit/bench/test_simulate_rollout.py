"""Simulated rollouts: the bound of a heterogeneous fleet, the JSON line, determinism by seed."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from bench.simulate.bounds import fleet_bound
from bench.simulate.cli import main
from bench.simulate.fleet import FleetSpec, build_fleet
from bench.simulate.rollout import run_rollout

MIB = 1 << 20


class TestBound:
    """Kumar-Ross with the fleet's own caps, slow nodes included."""

    def test_uniform_fleet_is_bound_by_the_origin(self) -> None:
        b = fleet_bound(100, 10.0, [10.0] * 4, [10.0] * 4)
        assert (b.seconds, b.binding) == (10.0, "origin")

    def test_slow_download_sets_the_bound(self) -> None:
        b = fleet_bound(100, 50.0, [50.0, 50.0, 5.0], [50.0, 50.0, 5.0])
        assert b.seconds == pytest.approx(20.0)
        assert b.binding == "download"

    def test_upload_term_with_heterogeneous_uploads(self) -> None:
        # N*F/(u_s + sum u) = 4*100/(10 + 3+3+2+2) = 20
        b = fleet_bound(100, 10.0, [3.0, 3.0, 2.0, 2.0], [1000.0] * 4)
        assert b.seconds == pytest.approx(20.0)
        assert b.binding == "upload"

    def test_slow_fraction_lowers_the_bound_terms(self) -> None:
        spec = FleetSpec(
            nodes=10, size=MIB, layers=1, bandwidth=100.0, origin_bandwidth=100.0, slow_fraction=0.2, slow_factor=10
        )
        fleet = build_fleet(spec)
        assert sorted(fleet.up[1:]).count(10.0) == 2
        assert fleet.up[0] == 100.0


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    data: dict[str, object] = json.loads(out[-1])
    data["exit"] = code
    return data


SMALL = ["--nodes", "8", "--size", "24M", "--layers", "2", "--bandwidth", "100mbit"]


class TestCommand:
    """The command's JSON line has the figures, and a seed fixes them."""

    @pytest.mark.parametrize("policy", ["shoal", "bittorrent"])
    def test_json_fields_and_determinism(self, policy: str, capsys: pytest.CaptureFixture[str]) -> None:
        first = run([*SMALL, "--policy", policy, "--seed", "3"], capsys)
        again = run([*SMALL, "--policy", policy, "--seed", "3"], capsys)
        for key in ("slowest_s", "p50_s", "bound_s", "ratio_to_bound", "origin_egress_ratio", "cross_zone_copies"):
            assert key in first
            assert first[key] == again[key]
        assert first["exit"] == 0
        assert first["finished"] == 8
        assert first["bound_s"] == pytest.approx(24 * MIB * 8 / 100e6, rel=1e-3)
        assert 1.0 <= float(first["ratio_to_bound"]) < 5  # type: ignore[arg-type]
        assert float(first["origin_egress_ratio"]) >= 1.0  # type: ignore[arg-type]

    def test_shoal_fetches_the_image_once_and_times_its_scheduler(self, capsys: pytest.CaptureFixture[str]) -> None:
        data = run([*SMALL, "--policy", "shoal"], capsys)
        assert data["origin_egress_ratio"] == 1.0
        assert int(data["scheduler_calls"]) > 8 * 2  # type: ignore[call-overload]
        assert float(data["scheduler_cpu_s"]) > 0  # type: ignore[arg-type]

    def test_a_bad_flag_is_one_line(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["--nodes", "0"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
        assert "--nodes" in err[0]


def test_rollout_of_a_fleet_with_slow_nodes_finishes_above_the_bound() -> None:
    spec = FleetSpec(
        nodes=6, size=8 * MIB, layers=1, bandwidth=12.5e6, origin_bandwidth=12.5e6, slow_fraction=0.34, slow_factor=4
    )
    result = run_rollout(build_fleet(spec), policy="shoal")
    assert result.finished == 6
    assert result.bound_term == "download"
    assert result.ratio_to_bound >= 1.0


class TestFailures:
    """Nodes and a scheduler replica die mid-rollout; every survivor still gets the image."""

    def test_churn_kills_the_fraction_and_survivors_finish(self) -> None:
        spec = FleetSpec(nodes=20, size=16 * MIB, layers=2, bandwidth=12.5e6, origin_bandwidth=12.5e6, churn=0.2)
        result = run_rollout(build_fleet(spec), policy="shoal")
        assert result.dead == 4
        assert result.finished == result.survivors == 16
        assert result.origin_egress_ratio >= 1.0

    def test_a_churn_run_is_the_same_every_time(self) -> None:
        spec = FleetSpec(nodes=40, size=32 * MIB, layers=2, bandwidth=12.5e6, origin_bandwidth=12.5e6, churn=0.2)
        runs = {
            (r.slowest_s, r.p50_s, r.origin_egress_ratio, r.events)
            for r in (run_rollout(build_fleet(spec), policy="shoal") for _ in range(4))
        }
        assert len(runs) == 1

    def test_bittorrent_survives_churn_too(self) -> None:
        spec = FleetSpec(nodes=20, size=16 * MIB, layers=2, bandwidth=12.5e6, origin_bandwidth=12.5e6, churn=0.2)
        result = run_rollout(build_fleet(spec), policy="bittorrent")
        assert result.finished == result.survivors == 16

    def test_a_dead_replica_moves_its_blobs_to_the_other(self) -> None:
        spec = FleetSpec(nodes=10, size=16 * MIB, layers=4, bandwidth=12.5e6, origin_bandwidth=12.5e6)
        result = run_rollout(build_fleet(spec), policy="shoal", replicas=2, scheduler_death=0.3)
        assert result.finished == 10
        assert result.scheduler_calls > 0

    def test_zones_are_crossed_about_once_each(self) -> None:
        # one copy per zone other than the first would be 2.0; endgame copies and a
        # replaced gateway add some (2.1-2.4 at this size; ~20 without the zone rule)
        spec = FleetSpec(nodes=30, size=64 * MIB, layers=2, bandwidth=12.5e6, origin_bandwidth=12.5e6, zones=3)
        result = run_rollout(build_fleet(spec), policy="shoal")
        assert result.finished == 30
        assert 1.9 <= result.cross_zone_copies <= 2.5


def test_rules_and_scheduler_options_reach_the_cores(capsys: pytest.CaptureFixture[str]) -> None:
    base = run(SMALL, capsys)
    changed = run([*SMALL, "--rule", "max_requests=1", "--scheduler-option", "max_parents=1"], capsys)
    assert changed["finished"] == 8
    assert changed["slowest_s"] != base["slowest_s"]
    assert main([*SMALL, "--rule", "nope=1"]) == 2


def test_start_spread_spreads_the_pulls() -> None:
    """``--start-spread``: the lab's pulls start over 0.5-0.7 s, the default over 0.2 s."""
    from bench.simulate.shoal_fleet import START_SPREAD, ShoalFleet
    from bench.simulate.shoal_node import Blob
    from bench.simulate.world import World

    def first_downloads(spread: float) -> list[float]:
        spec = FleetSpec(nodes=8, size=MIB, layers=1, bandwidth=12.5e6, origin_bandwidth=12.5e6, seed=1)
        world = World(build_fleet(spec))
        fleet = ShoalFleet(world, seed=1, start_spread=spread)
        starts: list[float] = []
        for agent in fleet.services.agents.values():
            pull = agent.pull

            def timed(blobs: list[Blob], pull: Callable[[list[Blob]], None] = pull) -> None:
                starts.append(world.clock.now)
                pull(blobs)

            agent.pull = timed  # type: ignore[method-assign]
        fleet.start()
        world.run(60.0)
        assert len(world.done_at) == 8
        return starts

    assert max(first_downloads(START_SPREAD)) <= START_SPREAD
    spread = first_downloads(3.0)
    assert 1.0 < max(spread) <= 3.0
