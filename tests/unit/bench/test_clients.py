"""The --client variants: what ctr pulls, how it is routed, and how a node is checked."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from bench.fleet.netns import plan_lab
from bench.fleet.origin import Origin
from bench.fleet.procs import Proc, ProcessSet
from bench.fleet.report import result_dict
from bench.fleet.scenarios.base import Fleet, new_result
from bench.fleet.scenarios.clients import LIGHTPULL, CtrClient, LightClient, PullClient, make_client, parse_go_duration

from shoal.demo.imagegen import BlobInfo

DIGEST = "sha256:" + "ab" * 32


def fleet(tmp_path: Path, client: str) -> Fleet:
    plan = plan_lab(2, node_bps=200_000_000, origin_bps=200_000_000, run_id="beef")
    return Fleet(
        plan=plan,
        procs=ProcessSet(),
        origin=Origin(plan.origin, tmp_path / "origin", ProcessSet()),
        tag="v1",
        blobs=[BlobInfo(digest=DIGEST, size=10, media_type="application/vnd.oci.image.layer.v1.tar")],
        workdir=tmp_path,
        client=client,
    )


class TestSkopeo:
    """The default keeps the skopeo pulls it always had."""

    def test_direct_and_mirror_refs(self, tmp_path: Path) -> None:
        f = fleet(tmp_path, "skopeo")
        c = make_client(f, tmp_path / "direct")
        assert type(c) is PullClient
        node = f.plan.nodes[0]
        assert "docker://10.77.0.1:5000/bench/app:v1" in c.pull_argv(node, None)
        via = c.pull_argv(node, "127.0.0.1:65001")
        assert "docker://127.0.0.1:65001/registry.bench/bench/app:v1" in via
        assert c.agent_registry_names() == []
        assert c.files(node)[DIGEST] == tmp_path / "direct" / "n0" / "oci" / "blobs" / "sha256" / ("ab" * 32)


class TestCtr:
    """ctr pulls the origin's name; hosts.toml says whether through the agent."""

    def test_direct_hosts_toml_names_the_server_as_host(self, tmp_path: Path) -> None:
        f = fleet(tmp_path, "ctr")
        c = make_client(f, tmp_path / "direct")
        assert isinstance(c, CtrClient)
        c.sockets["n0"] = "/tmp/x.sock"
        argv = c.pull_argv(f.plan.nodes[0], None)
        assert argv[:5] == ["ctr", "-a", "/tmp/x.sock", "-n", "bench"]
        assert argv[-1] == "10.77.0.1:5000/bench/app:v1"
        hosts = (tmp_path / "direct" / "n0" / "hosts" / "10.77.0.1:5000" / "hosts.toml").read_text()
        assert 'server = "http://10.77.0.1:5000"' in hosts
        assert '[host."http://10.77.0.1:5000"]' in hosts

    def test_mirror_hosts_toml_and_agent_name(self, tmp_path: Path) -> None:
        f = fleet(tmp_path, "ctr")
        c = make_client(f, tmp_path / "p2p")
        c.sockets["n1"] = "/tmp/y.sock"  # type: ignore[attr-defined]
        c.pull_argv(f.plan.nodes[1], "127.0.0.1:65001")
        hosts = (tmp_path / "p2p" / "n1" / "hosts" / "10.77.0.1:5000" / "hosts.toml").read_text()
        assert '[host."http://127.0.0.1:65001"]' in hosts
        assert 'capabilities = ["pull", "resolve"]' in hosts
        assert c.agent_registry_names() == ["10.77.0.1:5000"]

    def test_checks_the_content_store(self, tmp_path: Path) -> None:
        f = fleet(tmp_path, "ctr")
        c = make_client(f, tmp_path / "direct")
        want = tmp_path / "direct/n0/containerd/root/io.containerd.content.v1.content/blobs/sha256" / ("ab" * 32)
        assert c.files(f.plan.nodes[0]) == {DIGEST: want}

    def test_a_bypassed_mirror_is_seen(self, tmp_path: Path) -> None:
        c = make_client(fleet(tmp_path, "ctr"), tmp_path)
        agent = '{"http.request.useragent":"Python/3.12 aiohttp/3.14.5"}'
        ctrd = '{"http.request.useragent":"containerd/1.6.20~ds1"}'
        assert c.bypassed_mirror([agent]) is None
        assert "1 requests" in (c.bypassed_mirror([agent, ctrd]) or "")

    def test_unpack_note(self, tmp_path: Path) -> None:
        c = make_client(fleet(tmp_path, "ctr"), tmp_path)
        log = tmp_path / "n0.log"
        log.write_text("elapsed: 2.4 s\nunpacking linux/amd64 sha256:aa...\ndone: 218.677118ms\t\n")
        assert "median 0.22 s" in c.notes({"n0": log})[0]

    def test_result_says_which_client(self, tmp_path: Path) -> None:
        assert result_dict(new_result(fleet(tmp_path, "ctr"), "direct"))["client"] == "ctr"


class TestLight:
    """--client light: the script by path, the registry's or the agent's URL, files in a layout."""

    def test_direct_and_through_the_agent(self, tmp_path: Path) -> None:
        f = fleet(tmp_path, "light")
        c = make_client(f, tmp_path / "p2p")
        assert isinstance(c, LightClient)
        node = f.plan.nodes[0]
        dest = str(tmp_path / "p2p" / "n0" / "pull")
        assert c.pull_argv(node, None)[1:] == [str(LIGHTPULL), "http://10.77.0.1:5000", "bench/app", "v1", dest]
        assert c.pull_argv(node, "127.0.0.1:65001")[2:4] == ["http://127.0.0.1:65001", "registry.bench/bench/app"]
        assert c.files(node) == {DIGEST: Path(dest) / "blobs" / "sha256" / ("ab" * 32)}
        assert c.agent_registry_names() == []


class LocalProcs(ProcessSet):
    """Spawns on this host, not in a lab namespace (none exists in unit tests)."""

    def spawn(self, netns: str | None, argv: Sequence[str], **kwargs: Any) -> Proc:
        return super().spawn(None, argv, **kwargs)


class TestLightPrestart:
    """Issue 19: the light client's start-up is not in the rollout's clock, in every scenario."""

    def test_pulls_start_before_the_clock_and_go_on_the_signal(self, tmp_path: Path) -> None:
        f = fleet(tmp_path, "light")
        f.procs = LocalProcs()
        c = make_client(f, tmp_path / "p2p")
        assert c.start() is None
        logs = {h.role: tmp_path / f"{h.role}.log" for h in f.plan.nodes}
        mirror = "127.0.0.1:1"  # nothing listens: a pull that goes fails at once
        try:
            assert c.prestart(mirror, logs) is None
            waiting = dict(c.waiting)  # type: ignore[attr-defined]
            assert sorted(waiting) == ["n0", "n1"]
            time.sleep(0.2)
            assert all(p.poll() is None for p in waiting.values())  # set up, waiting for their go
            assert all((tmp_path / "p2p" / r / "pull-ready").exists() for r in waiting)
            started = c.start_pulls(mirror, logs)
            assert started == waiting
            assert [p.wait(30) for p in started.values()] == [1, 1]  # went, and found no agent
            assert "lightpull: GET http://127.0.0.1:1/" in logs["n0"].read_text()
        finally:
            c.stop()
            f.procs.stop_all()

    def test_the_report_says_the_pulls_started_before_the_clock(self, tmp_path: Path) -> None:
        """A result's notes say so: 'light' rows before and after the change (and next to
        BitTorrent's aria2c, which starts at the clock) are told apart in the table and JSON."""
        f = fleet(tmp_path, "light")
        f.procs = LocalProcs()
        c = make_client(f, tmp_path / "p2p")
        assert c.start() is None
        logs = {h.role: tmp_path / f"{h.role}.log" for h in f.plan.nodes}
        assert c.notes(logs) == []
        try:
            assert c.prestart("127.0.0.1:1", logs) is None
            for proc in c.start_pulls("127.0.0.1:1", logs).values():
                proc.wait(30)
        finally:
            c.stop()
            f.procs.stop_all()
        assert any("before the rollout's clock" in note for note in c.notes(logs)), c.notes(logs)

    def test_a_pull_that_dies_before_its_start_is_reported_and_the_rest_stopped(self, tmp_path: Path) -> None:
        f = fleet(tmp_path, "light")
        f.procs = LocalProcs()
        c = make_client(f, tmp_path / "p2p")
        assert c.start() is None
        (tmp_path / "p2p" / "n1").rmdir()  # its ready file cannot be made: it exits
        logs = {h.role: tmp_path / f"{h.role}.log" for h in f.plan.nodes}
        try:
            problem = c.prestart("127.0.0.1:1", logs)
            waiting = dict(c.waiting)  # type: ignore[attr-defined]
        finally:
            c.stop()
            alive = [p for p in waiting.values() if p.poll() is None]
            f.procs.stop_all()
        assert problem is not None
        assert problem.startswith("n1: lightpull exited with 1"), problem
        assert alive == []  # the scenario's finally (client.stop) stopped the other, waiting one
        assert c.notes(logs) == []

    def test_other_clients_start_at_the_clock(self, tmp_path: Path) -> None:
        c = make_client(fleet(tmp_path, "skopeo"), tmp_path / "direct")
        assert c.prestart(None, {}) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("218.677118ms", 0.218677118), ("1.5s", 1.5), ("1m2.5s", 62.5), ("750µs", 0.00075), ("soon", None)],
)
def test_go_durations(text: str, seconds: float | None) -> None:
    got = parse_go_duration(text)
    assert got == (None if seconds is None else pytest.approx(seconds))


def test_unknown_client(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown client"):
        make_client(fleet(tmp_path, "podman"), tmp_path)
