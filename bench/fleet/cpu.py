"""CPU seconds per MiB delivered: what each system's per-node data-plane processes cost.

The figure compares systems fairly (Shoal agents against aria2 leechers in the same run): sum
``utime + stime`` (and the reaped children's ``cutime + cstime``) from ``/proc/<pid>/stat`` of
every per-node data-plane process, taken when the rollout starts and again when it ends (before
any of them is stopped), and divide the difference by N x image MiB. ``ip netns exec`` execs,
so the PID the harness started is the program itself. Counting from the rollout start leaves
out what happened before the clock: the agents' Python start-up (about 0.3 CPU-seconds
each), which is not a cost per byte; it is kept apart as :attr:`DataPlaneCpu.before_s`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

__all__ = [
    "CpuMeter",
    "DataPlaneCpu",
    "cpu_ms_per_mib",
    "parse_hwm_kib",
    "parse_stat_ticks",
    "read_hwm_kib",
    "read_ticks",
]

MIB = 1 << 20


def parse_stat_ticks(stat: str) -> int:
    """utime + stime + cutime + cstime, in clock ticks, from one ``/proc/<pid>/stat`` line.

    The command name (field 2) is in parentheses and may hold spaces or ``)``: fields are
    counted after the *last* ``)``, where field 3 (state) comes first.
    """
    head, sep, rest = stat.rpartition(")")
    fields = rest.split()
    if not sep or "(" not in head or len(fields) < 15:
        raise ValueError(f"not a /proc/<pid>/stat line: {stat[:80]!r}")
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return utime + stime + cutime + cstime


def read_ticks(pid: int, proc: Path = Path("/proc")) -> int | None:
    """A process's CPU ticks so far (itself and its reaped children), or None if it is gone."""
    try:
        return parse_stat_ticks((proc / str(pid) / "stat").read_text())
    except (FileNotFoundError, ProcessLookupError):
        return None


def parse_hwm_kib(status: str) -> int | None:
    """The peak resident set (``VmHWM``, KiB) from a ``/proc/<pid>/status`` text."""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def read_hwm_kib(pid: int, proc: Path = Path("/proc")) -> int | None:
    try:
        return parse_hwm_kib((proc / str(pid) / "status").read_text())
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return None


def cpu_ms_per_mib(cpu_seconds: float, nodes: int, image_bytes: int) -> float | None:
    """Milliseconds of CPU per MiB delivered to the nodes (N x image), None without delivery."""
    if nodes <= 0 or image_bytes <= 0:
        return None
    return 1000.0 * cpu_seconds / (nodes * image_bytes / MIB)


@dataclass(frozen=True, slots=True)
class DataPlaneCpu:
    """What a rollout's data-plane processes spent, as stored in a ScenarioResult."""

    kind: str
    """Whose processes: ``agents`` or ``aria2 leechers``."""
    processes: int
    """How many were measured at the end (a process that died mid-rollout is missing)."""
    seconds: float
    """CPU seconds between the rollout's start and end, summed over the processes."""
    before_s: float = 0.0
    """CPU seconds they had spent before the rollout started (start-up), not in ``seconds``."""
    peak_rss_mib: float = 0.0
    """The largest peak resident set (VmHWM) of one process, read at the rollout's end."""


class CpuMeter:
    """Snapshots of per-process ticks by name; the rollout's cost is end minus start."""

    def __init__(self, kind: str, *, ticks_per_second: int | None = None, proc: Path = Path("/proc")) -> None:
        self.kind = kind
        self.hz = ticks_per_second or os.sysconf("SC_CLK_TCK")
        self.proc = proc
        self._start: dict[str, int] = {}

    def start(self, pids: Mapping[str, int]) -> None:
        """At the rollout start: processes already running (agents); ones started later count from 0."""
        self._start = {name: t for name, pid in pids.items() if (t := read_ticks(pid, self.proc)) is not None}

    def finish(self, pids: Mapping[str, int]) -> DataPlaneCpu:
        """At the rollout end, before any process is stopped."""
        spent = self.account({name: read_ticks(pid, self.proc) for name, pid in pids.items()})
        peaks = [kib for pid in pids.values() if (kib := read_hwm_kib(pid, self.proc)) is not None]
        return replace(spent, peak_rss_mib=max(peaks, default=0) / 1024)

    def account(self, end: Mapping[str, int | None]) -> DataPlaneCpu:
        """Pure part of :meth:`finish`: end ticks by name (None: the process is gone)."""
        alive = {n: t for n, t in end.items() if t is not None}
        before = sum(self._start.get(n, 0) for n in alive)
        spent = sum(alive.values()) - before
        return DataPlaneCpu(self.kind, len(alive), spent / self.hz, before / self.hz)
