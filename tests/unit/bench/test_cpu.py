"""CPU per MiB delivered: /proc/<pid>/stat parsing, start/end accounting, the per-MiB figure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from bench.fleet.bounds import kumar_ross_uniform
from bench.fleet.cpu import CpuMeter, DataPlaneCpu, cpu_ms_per_mib, parse_stat_ticks, read_ticks
from bench.fleet.report import print_table, result_dict
from bench.fleet.scenarios.base import ScenarioResult
from rich.console import Console

MIB = 1 << 20


def stat_line(pid: int, comm: str, utime: int, stime: int, cutime: int = 0, cstime: int = 0) -> str:
    # fields 3..13 (state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt), then 14..17
    middle = "S 1 1 1 0 -1 4194560 100 0 0 0"
    return f"{pid} ({comm}) {middle} {utime} {stime} {cutime} {cstime} 20 0 1 0 12345 0 0\n"


def fake_proc(tmp_path: Path, ticks: dict[int, tuple[int, int, int, int]]) -> Path:
    for pid, (u, s, cu, cs) in ticks.items():
        (tmp_path / str(pid)).mkdir(exist_ok=True)
        (tmp_path / str(pid) / "stat").write_text(stat_line(pid, "shoal", u, s, cu, cs))
    return tmp_path


class TestParseStat:
    """utime + stime + cutime + cstime, counted after the last ')'."""

    def test_sums_the_four_fields(self) -> None:
        assert parse_stat_ticks(stat_line(7, "aria2c", 120, 30, 4, 1)) == 155

    def test_command_names_with_spaces_and_parentheses(self) -> None:
        assert parse_stat_ticks(stat_line(7, "a) (b c", 10, 5)) == 15

    def test_this_process(self) -> None:
        own = read_ticks(os.getpid())
        assert own is not None
        assert own >= 0

    @pytest.mark.parametrize("bad", ["", "7 shoal S 1", "7 (shoal) S 1 1"])
    def test_garbage_is_refused(self, bad: str) -> None:
        with pytest.raises(ValueError, match="stat"):
            parse_stat_ticks(bad)

    def test_a_gone_process_is_none(self, tmp_path: Path) -> None:
        assert read_ticks(424242, tmp_path) is None


class TestMeter:
    """The rollout's cost is end minus start; start-up CPU is kept apart."""

    def test_running_processes_count_from_the_start_snapshot(self, tmp_path: Path) -> None:
        proc = fake_proc(tmp_path, {10: (50, 10, 0, 0), 11: (40, 20, 0, 0)})
        meter = CpuMeter("agents", ticks_per_second=100, proc=proc)
        meter.start({"n0": 10, "n1": 11})
        fake_proc(tmp_path, {10: (250, 60, 0, 0), 11: (140, 70, 5, 5)})
        got = meter.finish({"n0": 10, "n1": 11})
        assert got == DataPlaneCpu("agents", 2, (250 + 60 - 60 + 140 + 70 + 10 - 60) / 100, 1.2)

    def test_processes_started_after_the_snapshot_count_whole(self, tmp_path: Path) -> None:
        meter = CpuMeter("aria2 leechers", ticks_per_second=100, proc=tmp_path)
        meter.start({})
        fake_proc(tmp_path, {20: (300, 70, 0, 0)})
        assert meter.finish({"n0": 20}) == DataPlaneCpu("aria2 leechers", 1, 3.7, 0.0)

    def test_a_process_gone_by_the_end_is_left_out(self, tmp_path: Path) -> None:
        proc = fake_proc(tmp_path, {30: (100, 0, 0, 0), 31: (100, 0, 0, 0)})
        meter = CpuMeter("agents", ticks_per_second=100, proc=proc)
        meter.start({"n0": 30, "n1": 31})
        fake_proc(tmp_path, {30: (300, 0, 0, 0)})
        (tmp_path / "31" / "stat").unlink()
        got = meter.finish({"n0": 30, "n1": 31})
        assert (got.processes, got.seconds, got.before_s) == (1, 2.0, 1.0)


class TestPerMib:
    """Milliseconds of CPU per MiB delivered to N nodes."""

    def test_the_issue_s_aria2_anchor(self) -> None:
        # 10 nodes x 96 MiB = 960 MiB; 3.552 CPU-seconds -> 3.7 ms/MiB
        assert cpu_ms_per_mib(3.552, 10, 96 * MIB) == pytest.approx(3.7)

    @pytest.mark.parametrize(("nodes", "size"), [(0, MIB), (3, 0)])
    def test_nothing_delivered(self, nodes: int, size: int) -> None:
        assert cpu_ms_per_mib(1.0, nodes, size) is None


def result(cpu: DataPlaneCpu | None) -> ScenarioResult:
    return ScenarioResult(
        scenario="p2p",
        nodes=10,
        image_bytes=96 * MIB,
        node_bps=100_000_000,
        origin_bps=100_000_000,
        heterogeneous=False,
        bound=kumar_ross_uniform(96 * MIB, 10, 100_000_000, 100_000_000),
        data_plane=cpu,
    )


class TestReport:
    """The figure is in the table and the JSON, per scenario."""

    def test_json(self) -> None:
        doc = result_dict(result(DataPlaneCpu("agents", 10, 15.84, 6.0)))["data_plane_cpu"]
        assert doc["kind"] == "agents"
        assert doc["processes"] == 10
        assert doc["startup_cpu_s"] == 6.0
        assert doc["ms_per_mib_delivered"] == pytest.approx(16.5)

    def test_json_without_a_measurement(self) -> None:
        assert result_dict(result(None))["data_plane_cpu"] is None

    def test_table(self) -> None:
        console = Console(width=300, record=True)
        print_table([result(DataPlaneCpu("aria2 leechers", 10, 3.552))], console)
        text = console.export_text()
        assert "data-plane CPU" in text
        assert "3.7 ms/MiB (aria2 leechers)" in text


class TestPeakRss:
    """Agent memory at scale (the issue's < 150 MB at N=40) is read as VmHWM at the end."""

    def test_parse_hwm(self) -> None:
        from bench.fleet.cpu import parse_hwm_kib

        status = "Name:\tshoal\nVmPeak:\t  900000 kB\nVmHWM:\t   61234 kB\nVmRSS:\t   60000 kB\n"
        assert parse_hwm_kib(status) == 61234
        assert parse_hwm_kib("Name:\tkthreadd\n") is None

    def test_the_largest_process_is_reported(self, tmp_path: Path) -> None:
        for pid, hwm in ((10, 51200), (11, 102400)):
            (tmp_path / str(pid)).mkdir()
            (tmp_path / str(pid) / "stat").write_text(f"{pid} (shoal) S " + "0 " * 10 + "5 5 0 0 20 0\n")
            (tmp_path / str(pid) / "status").write_text(f"VmHWM:\t {hwm} kB\n")
        meter = CpuMeter("agents", ticks_per_second=100, proc=tmp_path)
        meter.start({"a": 10, "b": 11})
        assert meter.finish({"a": 10, "b": 11}).peak_rss_mib == 100.0
