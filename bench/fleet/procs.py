"""Processes started inside lab namespaces, tracked by PID and stopped by PID only."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

__all__ = ["ProcessSet"]

Proc = subprocess.Popen[bytes]


class ProcessSet:
    """Starts ``ip netns exec NS argv...`` and remembers every PID it started.

    ``ip netns exec`` execs the command, so the PID we hold is the program's own. Each gets a
    session of its own, so a Ctrl-C in the terminal reaches only us and we stop them in order.
    """

    def __init__(self) -> None:
        self._procs: list[Proc] = []
        self._logs: list[IO[bytes]] = []

    def spawn(
        self,
        netns: str | None,
        argv: Sequence[str],
        *,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Proc:
        full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
        out: IO[bytes] | int = subprocess.DEVNULL
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            handle = open(log, "ab")  # noqa: SIM115 - closed in stop_all
            self._logs.append(handle)
            out = handle
        proc = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
        self._procs.append(proc)
        return proc

    def signal(self, proc: Proc, sig: int = signal.SIGTERM) -> None:
        if proc in self._procs and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)

    def stop(self, procs: Sequence[Proc], timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``, exactly these processes."""
        for proc in procs:
            self.signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                proc.wait(remaining)
            except subprocess.TimeoutExpired:
                self.signal(proc, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        self._procs = [p for p in self._procs if p.poll() is None]

    def stop_all(self, timeout: float = 5.0) -> None:
        self.stop(list(self._procs), timeout)
        for handle in self._logs:
            handle.close()
        self._logs.clear()
