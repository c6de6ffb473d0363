"""A fleet on one machine: a scheduler and N agents as separate processes on 127.0.0.x.

Used by ``shoal demo`` and by the swarm's integration tests. Every process is ours: we
start it, we stop it by its PID.
"""

from __future__ import annotations

import os
import secrets
import signal
import ssl
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


def wait_healthy(
    url: str, process: ManagedProcess, timeout: float = 20.0, context: ssl.SSLContext | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"{url} exited ({process.returncode}):\n{process.log_tail()}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1, context=context) as resp:
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
        tls: the scheduler holds a CA (``workdir/ca``) and serves TLS 1.3; each agent enrolls
            (with the peer token, over TLS pinned to the CA) for a certificate of its 127.0.0.x
            address, kept in ``node-N/tls``, and runs the peer wire in TLS 1.3 with it. False:
            everything in clear, for lab comparisons.
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
        self.ca_dir = workdir / "ca"
        self.ca: TestCA | None = None
        """the scheduler's CA (with ``tls``), to give a test's own peer a certificate"""

    @property
    def ca_file(self) -> Path:
        """The CA certificate clients verify the schedulers with (``--scheduler-ca``)."""
        return self.ca_dir / "tls.crt"

    def scheduler_context(self) -> ssl.SSLContext | None:
        """A client context that verifies the schedulers (None without TLS)."""
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        return context

    def start(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.token_file.write_text(secrets.token_urlsafe(24))
        if self.tls:
            from shoal.scheduler.ca import write_new_ca

            write_new_ca(self.ca_dir, common_name="shoal demo CA")
            self.ca = TestCA.load(self.ca_dir)
        scheme = "https" if self.tls else "http"
        try:
            for i in range(self.scheduler_count):
                port = free_port()
                self.schedulers.append((f"{scheme}://127.0.0.1:{port}", self._scheduler_process(i, port)))
            port = free_port(*(self._agent_host(i) for i in range(self.count)))
            for i in range(self.count):
                self._start_agent(i, port)
            for url, proc in self.schedulers:
                wait_healthy(url, proc, context=self.scheduler_context())
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
                *(("--tls-ca-dir", str(self.ca_dir)) if self.tls else ()),
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
        wait_healthy(url, fresh, context=self.scheduler_context())

    @staticmethod
    def _agent_host(i: int) -> str:
        return f"127.0.0.{i + 2}"

    def _start_agent(self, i: int, port: int) -> None:
        address = f"{self._agent_host(i)}:{port}"
        cache = self.workdir / f"node-{i}" / "cache"
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
            *self._agent_tls_args(i),
            *self.agent_args,
        )
        proc = ManagedProcess(argv, stdout=self.workdir / f"node-{i}.log")
        self.nodes.append(FleetNode(i, address, cache, proc))

    def _agent_tls_args(self, i: int) -> tuple[str, ...]:
        if not self.tls:
            return ("--insecure-peer-wire",)
        if not self.schedulers:  # source mode: no scheduler to enroll with, and no peer wire
            return ()
        return ("--tls-dir", str(self.tls_dir(i)), "--scheduler-ca", str(self.ca_file))

    def tls_dir(self, index: int) -> Path:
        """Where agent ``index`` keeps its node certificate."""
        return self.workdir / f"node-{index}" / "tls"

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
