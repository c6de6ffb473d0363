"""A fleet on one machine: a scheduler and N agents as separate processes on 127.0.0.x.

Used by ``shoal demo`` and by the swarm's integration tests. Every process is ours: we
start it, we stop it by its PID.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from shoal.core.promtext import flatten
from shoal.demo.pki import TestCA
from shoal.demo.procs import ManagedProcess, free_port


@dataclass
class FleetNode:
    index: int
    address: str
    """host:port, also the agent's peer id"""
    cache_dir: Path
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"http://{self.address}"


def shoal_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "shoal", *args]


def wait_healthy(url: str, process: ManagedProcess, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"{url} exited ({process.returncode}):\n{process.log_tail()}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not become healthy in {timeout:.0f}s:\n{process.log_tail()}")


def scrape(url: str) -> dict[str, float]:
    """Flatten an agent's /metrics into ``{"name{label=value,...}": value}``."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        return flatten(resp.read().decode())


class LocalFleet:
    """Start with ``with LocalFleet(...) as fleet:``; agents are ``fleet.nodes``.

    Parameters:
        workdir: logs, caches and the peer token go here.
        nodes: how many agents (on 127.0.0.2, 127.0.0.3, ...).
        registries: NAME -> URL, as ``shoal agent --registry``.
        download_pattern: ``p2p`` (with a scheduler) or ``source`` (no scheduler at all).
        agent_args: extra flags for every agent.
        scheduler_args: extra flags for every scheduler.
        tls: the peer wire in TLS 1.3, each node with a certificate for its own address from
            a throwaway CA in ``workdir`` (False: in clear, for lab comparisons).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        nodes: int,
        registries: dict[str, str],
        download_pattern: str = "p2p",
        agent_args: tuple[str, ...] = (),
        schedulers: int = 1,
        scheduler_args: tuple[str, ...] = (),
        tls: bool = True,
    ) -> None:
        self.workdir = workdir
        self.count = nodes
        self.registries = registries
        self.download_pattern = download_pattern
        self.agent_args = agent_args
        self.scheduler_args = scheduler_args
        self.scheduler_count = schedulers if download_pattern == "p2p" else 0
        self.nodes: list[FleetNode] = []
        self.schedulers: list[tuple[str, ManagedProcess]] = []
        self.token_file = workdir / "peer-token"
        self.tls = tls
        self.ca: TestCA | None = None
        """the fleet's throwaway CA (with ``tls``), to give a test's own peer a certificate"""

    def start(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.token_file.write_text(secrets.token_urlsafe(24))
        self.ca = TestCA.create("shoal demo fleet CA") if self.tls else None
        try:
            for i in range(self.scheduler_count):
                port = free_port()
                self.schedulers.append((f"http://127.0.0.1:{port}", self._scheduler_process(i, port)))
            port = free_port()
            for i in range(self.count):
                self._start_agent(i, port)
            for url, proc in self.schedulers:
                wait_healthy(url, proc)
            for node in self.nodes:
                wait_healthy(node.url, node.process)
        except BaseException:
            self.stop()
            raise
        return self

    def _scheduler_process(self, i: int, port: int) -> ManagedProcess:
        return ManagedProcess(
            shoal_argv(
                "scheduler",
                "--listen",
                f"127.0.0.1:{port}",
                "--peer-token-file",
                str(self.token_file),
                *self.scheduler_args,
            ),
            stdout=self.workdir / f"scheduler-{i}.log",
        )

    def restart_scheduler(self, index: int = 0) -> None:
        """Kill a scheduler and start a fresh one (empty state) on the same address."""
        url = self.schedulers[index][0]
        self.kill_scheduler(index)
        port = int(url.rsplit(":", 1)[1])
        fresh = self._scheduler_process(index, port)
        self.schedulers[index] = (url, fresh)
        wait_healthy(url, fresh)

    def _start_agent(self, i: int, port: int) -> None:
        address = f"127.0.0.{i + 2}:{port}"
        cache = self.workdir / f"node-{i}" / "cache"
        tls: tuple[str, ...] = ("--insecure-peer-wire",)
        if self.ca is not None:
            host = address.rpartition(":")[0]
            tls = ("--tls-dir", str(self.ca.issue(self.workdir / f"node-{i}" / "tls", f"node-{i}", ips=(host,))))
        argv = shoal_argv(
            "agent",
            "--listen",
            address,
            "--cache-dir",
            str(cache),
            "--download-pattern",
            self.download_pattern,
            "--peer-token-file",
            str(self.token_file),
            *(f"--registry={name}={url}" for name, url in self.registries.items()),
            *(f"--scheduler={url}" for url, _ in self.schedulers),
            *tls,
            *self.agent_args,
        )
        proc = ManagedProcess(argv, stdout=self.workdir / f"node-{i}.log")
        self.nodes.append(FleetNode(i, address, cache, proc))

    def kill(self, index: int) -> None:
        """SIGKILL an agent: a node that dies, not one that shuts down politely."""
        proc = self.nodes[index].process
        if proc.alive():
            os.kill(proc.pid, signal.SIGKILL)
        proc.stop(timeout=5)

    def kill_scheduler(self, index: int = 0) -> None:
        self.schedulers[index][1].stop(timeout=2)

    def stop(self) -> None:
        for node in self.nodes:
            node.process.stop(timeout=5)
        for _, proc in self.schedulers:
            proc.stop(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
