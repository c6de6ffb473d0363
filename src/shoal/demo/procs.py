"""Start and stop programs by PID, find free ports, wait for readiness (the demo fleet and the test drivers).

Only processes started here are ever signalled, and only by their own PID.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import IO

__all__ = [
    "ManagedProcess",
    "ProgramMissingError",
    "StartupError",
    "free_port",
    "require",
    "tail",
    "wait_until",
]

# Debian packages that provide each program, for error messages.
PACKAGES = {
    "docker-registry": "docker-registry",
    "skopeo": "skopeo",
    "containerd": "containerd",
    "ctr": "containerd",
    "htpasswd": "apache2-utils",
}


class ProgramMissingError(RuntimeError):
    """A third-party program the test lab needs is not installed."""


class StartupError(RuntimeError):
    """A program did not become ready; the message carries the tail of its log."""


def require(program: str) -> str:
    """The absolute path of ``program``, or a clear error naming the package to install."""
    path = shutil.which(program)
    if path is None:
        package = PACKAGES.get(program, program)
        raise ProgramMissingError(
            f"{program!r} is not on PATH: install it (apt-get install -y {package}); "
            "the test lab and CI need the real program"
        )
    return path


def free_port(*hosts: str) -> int:
    """A TCP port free on every one of ``hosts`` (default 127.0.0.1) a moment ago.

    The port is drawn below the kernel's ephemeral range: a client socket's automatic port
    comes from that range, so no outgoing connection can take the port between this probe
    and the listener's bind (a port from ``bind(0)`` is in it, and was once taken so by a
    connection from a fleet's agent address). Another listener picking the same port in
    that moment is still possible; callers that can retry should.
    """
    targets = hosts or ("127.0.0.1",)
    low, high = _EPHEMERAL_FLOOR, min(_ephemeral_range()[0], _NODE_PORTS)
    if high - low < 1000:  # an unusual ephemeral range: let the kernel choose
        low, high = 0, 0
    for _ in range(200):
        port = _RANDOM.randrange(low, high) if high else 0
        chosen = _bind_all(targets, port)
        if chosen:
            return chosen
    raise OSError(f"no TCP port free on all of {', '.join(targets)}")


_EPHEMERAL_FLOOR = 10000
"""the lowest port :func:`free_port` draws (well clear of the system services' ports)"""
_NODE_PORTS = 30000
"""Kubernetes' NodePort range starts here: on a host that is a node, kube-proxy redirects
those ports without holding a socket a bind could see, so :func:`free_port` stays below"""
_RANDOM = random.Random()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bind_all(hosts: Sequence[str], port: int) -> int:
    """``port`` (or, for 0, the kernel's pick on the first host) if it binds on every host, else 0
    (the port is in use on one); an error of another kind is raised."""
    with ExitStack() as stack:
        for host in hosts:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                sock.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return 0
                raise  # not a port in use (an address not of this host, say): draws cannot help
            port = sock.getsockname()[1]
        return port


def tail(path: Path | None, lines: int = 25) -> str:
    if path is None or not path.exists():
        return "(no log)"
    text = path.read_bytes()[-16384:].decode(errors="replace").replace("\0", "")
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """A subprocess we own: its output goes to files, and stop() signals only its PID.

    Parameters:
        argv: program and arguments; ``argv[0]`` is resolved with :func:`require`.
        stdout: file for standard output (``None``: discarded).
        stderr: file for standard error (``None``: same file as stdout).
        env: extra environment variables on top of ours.
        cwd: working directory.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        stdout: Path | None = None,
        stderr: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = [require(argv[0]), *argv[1:]]
        self.stdout_path = stdout
        self.stderr_path = stderr if stderr is not None else stdout
        with ExitStack() as files:
            out: IO[bytes] | int = subprocess.DEVNULL
            if stdout is not None:
                out = files.enter_context(open(stdout, "ab"))
            err: IO[bytes] | int = out
            if stderr is not None and stderr != stdout:
                err = files.enter_context(open(stderr, "ab"))
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,  # a terminal's Ctrl-C does not reach it; we stop it
            )

    @property
    def pid(self) -> int:
        return self._popen.pid

    def alive(self) -> bool:
        return self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def log_tail(self) -> str:
        return tail(self.stderr_path)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM our PID, then SIGKILL it if it lingers; returns its exit status."""
        if self._popen.poll() is None:
            self._popen.send_signal(signal.SIGTERM)
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait(timeout)
        return self._popen.returncode


def wait_until(
    check: Callable[[], bool],
    *,
    what: str,
    timeout: float = 15.0,
    process: ManagedProcess | None = None,
    interval: float = 0.05,
) -> None:
    """Poll ``check`` until it is true; fail fast with the log if ``process`` dies."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if process is not None and not process.alive():
            raise StartupError(
                f"{what}: {process.argv[0]} exited with status {process.returncode}; log tail:\n{process.log_tail()}"
            )
        if time.monotonic() > deadline:
            log = process.log_tail() if process is not None else "(no process)"
            raise StartupError(f"{what}: not ready after {timeout:.0f} s; log tail:\n{log}")
        time.sleep(interval)
