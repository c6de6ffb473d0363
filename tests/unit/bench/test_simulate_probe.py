"""``--probe``: the network sampled during a rollout, without changing the rollout."""

from __future__ import annotations

import io
import json

import pytest
from bench.simulate.cli import main
from bench.simulate.fleet import FleetSpec, build_fleet
from bench.simulate.probe import sample, start_probe
from bench.simulate.world import ORIGIN, World

MIB = 1 << 20


def small_world(nodes: int = 3) -> World:
    spec = FleetSpec(nodes=nodes, size=4 * MIB, layers=1, bandwidth=float(MIB), origin_bandwidth=float(MIB))
    return World(build_fleet(spec))


class TestSample:
    def test_an_idle_network(self) -> None:
        s = sample(small_world())
        assert (s.upload_busy, s.uploads_under_half, s.flows_out, s.flows_in) == (0.0, 1.0, 0.0, 0.0)

    def test_flows_and_busy_uploads(self) -> None:
        world = small_world()
        net = world.net
        # node 1 sends to 2 and 3 (its upload full, half each); the origin's flow to 1 is not a node's upload
        net.send(1, 2, MIB, lambda: None)
        net.send(1, 3, MIB, lambda: None)
        net.send(ORIGIN, 1, MIB, lambda: None)
        net.step(world.clock.now)
        s = sample(world)
        assert s.upload_busy == pytest.approx(1 / 3)
        assert s.uploads_under_half == pytest.approx(2 / 3)
        assert (s.flows_out, s.flows_in) == (2.0, 1.0)

    def test_a_dead_node_is_left_out(self) -> None:
        world = small_world()
        world.dead.add(2)
        world.net.send(1, 3, MIB, lambda: None)
        world.net.step(world.clock.now)
        assert sample(world).upload_busy == pytest.approx(1 / 2)


class TestProbe:
    def test_samples_until_the_rollout_ends(self) -> None:
        world = small_world()
        out = io.StringIO()
        samples = start_probe(world, 0.5, out)
        world.timers.after(1.2, lambda: world.done_at.update({1: 1.2, 2: 1.2, 3: 1.2}))
        world.run(10.0)
        assert [s.at for s in samples] == [0.5, 1.0]
        assert out.getvalue().count("probe t=") == 2

    def test_rejects_a_bad_interval(self) -> None:
        with pytest.raises(ValueError, match="> 0"):
            start_probe(small_world(), 0.0)

    def test_a_probed_rollout_is_the_same_rollout(self, capsys: pytest.CaptureFixture[str]) -> None:
        argv = ["--nodes", "6", "--size", "16M", "--layers", "2", "--bandwidth", "100mbit", "--json"]
        assert main(argv) == 0
        plain = capsys.readouterr().out.strip().splitlines()[-1]
        assert main([*argv, "--probe", "0.25"]) == 0
        captured = capsys.readouterr()
        probed = captured.out.strip().splitlines()[-1]
        assert "probe t=  0.25" in captured.err

        def rollout(line: str) -> str:
            # the wall time, the scheduler's CPU and the step count (the probe's timers) aside
            data = json.loads(line)
            for key in ("wall_s", "scheduler_cpu_s", "scheduler_cpu_share", "events"):
                data.pop(key)
            return json.dumps(data, sort_keys=True)

        assert rollout(probed) == rollout(plain)
