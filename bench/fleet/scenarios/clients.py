"""The client on every node: ``skopeo`` (default), ``ctr`` with its own containerd, or ``light``.

``skopeo``: ``skopeo copy`` into an OCI layout; a node is checked by hashing the layout's blobs.

``ctr``: each node runs a private containerd 1.6 inside its namespace (root, state and socket
under the node's work dir, CRI plugin off), started before the rollout clock and stopped by
PID afterwards. The pull is ``ctr image pull --plain-http --hosts-dir DIR <origin-ip>:5000/
bench/app:TAG`` (fetch and unpack; ctr 1.6 has no ``--skip-unpack``), routed by
``DIR/<origin-ip>:5000/hosts.toml``:

- direct: ``server = "http://<origin-ip>:5000"`` and that server as the ``[host]``;
- via the node's agent: ``[host."http://127.0.0.1:65001"]`` as a mirror, so containerd asks
  the agent for ``/v2/bench/app/...?ns=<origin-ip>:5000``; the agents then know the origin by
  that name as well (:meth:`PullClient.agent_registry_names`).

``light``: ``bench/fleet/lightpull.py`` (standard library only, run by path): the manifest,
then every blob in parallel into ``<node dir>/pull/blobs/sha256/<hex>``, like curl, so the
client takes as little of the two cores as possible from the data plane being measured.
Through the agent it uses the path form ``/v2/<upstream-name>/bench/app/...``.

A ctr node is checked after the clock stops: every expected blob file in the node's content
store hashes to its digest, and ``ctr image check`` reports the image complete and unpacked.
"""

from __future__ import annotations

import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from bench.fleet.netns import Host
from bench.fleet.origin import REPOSITORY, netns_run
from bench.fleet.procs import Proc
from bench.fleet.scenarios.base import Fleet, layout_files, skopeo_pull_argv
from shoal.testing.containerd import write_hosts_toml

__all__ = ["CLIENTS", "CtrClient", "LightClient", "PullClient", "make_client"]

CLIENTS = ("skopeo", "ctr", "light")
LIGHTPULL = Path(__file__).resolve().parent.parent / "lightpull.py"
CTR_NAMESPACE = "bench"
SNAPSHOTTER = "overlayfs"
"""Unpacks inside the lab namespaces (``ip netns exec`` gives containerd its own mount ns)."""
_START_TIMEOUT = 30.0
_MAX_SOCKET_PATH = 96  # containerd refuses paths > 104 bytes and adds ".ttrpc"


class PullClient:
    """skopeo: nothing to start; pulls into ``<node dir>/oci``."""

    name = "skopeo"

    def __init__(self, fleet: Fleet, work: Path) -> None:
        self.fleet = fleet
        self.work = work

    def node_dir(self, host: Host) -> Path:
        return self.work / host.role

    def start(self) -> str | None:
        """Make the node dirs and start per-node daemons (before the clock); a problem, or None."""
        for host in self.fleet.plan.nodes:
            self.node_dir(host).mkdir(parents=True, exist_ok=True)
        return None

    def agent_registry_names(self) -> list[str]:
        """Names the agents must map to the origin, besides ``fleet.upstream_name``."""
        return []

    def pull_argv(self, host: Host, mirror: str | None) -> list[str]:
        """The pull on ``host``: from the origin, or through the agent at ``mirror`` (host:port)."""
        ref = self.fleet.origin_ref
        if mirror is not None:
            ref = f"{mirror}/{self.fleet.upstream_name}/{REPOSITORY}:{self.fleet.tag}"
        return skopeo_pull_argv(ref, self.node_dir(host) / "oci", self.fleet.tag)

    def prestart(self, mirror: str | None, logs: Mapping[str, Path]) -> str | None:
        """Before the clock: start what a node's pull needs that a real client has running
        already (see :meth:`LightClient.prestart`); a problem, or None. Nothing here."""
        return None

    def start_pulls(self, mirror: str | None, logs: Mapping[str, Path]) -> dict[str, Proc]:
        """At the clock: every node's pull, through ``mirror`` (host:port) or from the origin
        (None), each logging into ``logs[role]``; node -> its process."""
        return {
            h.role: self.fleet.procs.spawn(h.netns, self.pull_argv(h, mirror), log=logs[h.role])
            for h in self.fleet.plan.nodes
        }

    def files(self, host: Host) -> dict[str, Path]:
        """Where the node's copy of each expected blob is, digest -> file."""
        return layout_files(self.node_dir(host) / "oci", self.fleet.blobs)

    def check(self, host: Host) -> str | None:
        """A client-side problem beyond the blob hashes (called before :meth:`stop`)."""
        return None

    def bypassed_mirror(self, origin_log: list[str]) -> str | None:
        """Whether the client itself asked the origin (its mirror was skipped), from the origin's log."""
        return None

    def notes(self, logs: Mapping[str, Path]) -> list[str]:
        """Lines for the report, from the clients' logs."""
        return []

    def stop(self) -> None:
        """Stop what :meth:`start` started (by PID)."""


class CtrClient(PullClient):
    """``ctr image pull`` against a containerd per node (see the module docstring)."""

    name = "ctr"

    def __init__(self, fleet: Fleet, work: Path) -> None:
        super().__init__(fleet, work)
        self.daemons: dict[str, Proc] = {}
        self.sockets: dict[str, str] = {}
        self._socket_dirs: list[Path] = []

    def _cd_dir(self, host: Host) -> Path:
        return self.node_dir(host) / "containerd"

    def _root(self, host: Host) -> Path:
        return self._cd_dir(host) / "root"

    def _config(self, host: Host, socket: str) -> str:
        d = self._cd_dir(host)
        return "\n".join(
            [
                "version = 2",
                f'root = "{d / "root"}"',
                f'state = "{d / "state"}"',
                'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
                "[grpc]",
                f'  address = "{socket}"',
                "[debug]",
                '  level = "warn"',
                '[plugins."io.containerd.internal.v1.opt"]',
                f'  path = "{d / "opt"}"',
                "",
            ]
        )

    def ctr_argv(self, host: Host, *args: str) -> list[str]:
        return ["ctr", "-a", self.sockets[host.role], "-n", CTR_NAMESPACE, *args]

    def _answers(self, host: Host) -> bool:
        if not Path(self.sockets[host.role]).exists():
            return False
        return netns_run(host.netns, self.ctr_argv(host, "version"), timeout=10).returncode == 0

    def start(self) -> str | None:
        super().start()
        for host in self.fleet.plan.nodes:
            d = self._cd_dir(host)
            d.mkdir(parents=True, exist_ok=True)
            socket = str(d / "containerd.sock")
            if len(socket) > _MAX_SOCKET_PATH:
                short = Path(tempfile.mkdtemp(prefix="shoal-fleet-ctrd-", dir="/tmp"))
                self._socket_dirs.append(short)
                socket = str(short / "c.sock")
            self.sockets[host.role] = socket
            config = d / "config.toml"
            config.write_text(self._config(host, socket))
            self.daemons[host.role] = self.fleet.procs.spawn(
                host.netns, ["containerd", "--config", str(config)], log=d / "containerd.log"
            )
        deadline = time.monotonic() + _START_TIMEOUT
        pending = list(self.fleet.plan.nodes)
        while pending and time.monotonic() < deadline:
            for host in list(pending):
                if (rc := self.daemons[host.role].poll()) is not None:
                    return f"{host.role}: containerd exited with {rc}"
                if self._answers(host):
                    pending.remove(host)
            time.sleep(0.1)
        if pending:
            return f"containerd not answering after {_START_TIMEOUT:.0f} s: {', '.join(h.role for h in pending)}"
        return None

    def agent_registry_names(self) -> list[str]:
        return [self.fleet.origin.address]

    def pull_argv(self, host: Host, mirror: str | None) -> list[str]:
        hosts_dir = self.node_dir(host) / "hosts"
        registry = self.fleet.origin.address
        write_hosts_toml(hosts_dir, registry, mirrors=[f"http://{mirror}"] if mirror else [])
        ref = f"{registry}/{REPOSITORY}:{self.fleet.tag}"
        return self.ctr_argv(
            host,
            "image",
            "pull",
            "--plain-http",
            "--snapshotter",
            SNAPSHOTTER,
            "--hosts-dir",
            str(hosts_dir),
            ref,
        )

    def files(self, host: Host) -> dict[str, Path]:
        blobs = self._root(host) / "io.containerd.content.v1.content" / "blobs"
        return {b.digest: blobs / b.digest.replace(":", "/", 1) for b in self.fleet.blobs}

    def check(self, host: Host) -> str | None:
        """``ctr image check``: the image complete in the content store and unpacked."""
        ref = f"{self.fleet.origin.address}/{REPOSITORY}:{self.fleet.tag}"
        proc = netns_run(
            host.netns,
            self.ctr_argv(host, "image", "check", "--snapshotter", SNAPSHOTTER, f"name=={ref}"),
            timeout=60,
        )
        rows = [line.split() for line in proc.stdout.splitlines()[1:] if line.split()[:1] == [ref]]
        if proc.returncode != 0 or not rows:
            return f"ctr image check: {(proc.stderr or proc.stdout).strip()[-200:] or 'image not listed'}"
        row = " ".join(rows[0])
        if "complete" not in row or rows[0][-1] != "true":
            return f"ctr image check: {row}"
        return None

    def bypassed_mirror(self, origin_log: list[str]) -> str | None:
        """containerd falls back to ``server`` if the mirror fails: that shows as its user agent."""
        hits = [line for line in origin_log if '"http.request.useragent":"containerd/' in line]
        if not hits:
            return None
        return f"{len(hits)} requests from containerd straight to the origin (mirror failed?)"

    def notes(self, logs: Mapping[str, Path]) -> list[str]:
        """Unpack time: ctr prints ``done: <Go duration>`` after unpacking, inside the timed pull."""
        times = [t for log in logs.values() if log.exists() and (t := _unpack_seconds(log.read_text(errors="replace")))]
        if not times:
            return []
        times.sort()
        return [
            f"ctr image pull fetches then unpacks ({SNAPSHOTTER} snapshotter) inside the timed pull; "
            f"unpack took median {times[len(times) // 2]:.2f} s, max {times[-1]:.2f} s"
        ]

    def stop(self) -> None:
        self.fleet.procs.stop(list(self.daemons.values()), timeout=15)
        self.daemons.clear()
        for d in self._socket_dirs:
            shutil.rmtree(d, ignore_errors=True)
        self._socket_dirs.clear()


class LightClient(PullClient):
    """``lightpull.py``: manifest, then every blob in parallel into files (see the module docstring).

    Its processes start before the rollout's clock (:meth:`prestart`), import their modules
    and build their HTTP opener, then wait; the clock starts when they are all told to go
    (:meth:`start_pulls`). Ten Python processes starting at once on two cores spent most of
    a second before their first request (measured in docs/fleet-benchmark.md, "The start of
    a rollout, node by node"), a start-up a container runtime's pull does not have; the
    same for every scenario it pulls in (direct, source, p2p)."""

    name = "light"

    def __init__(self, fleet: Fleet, work: Path) -> None:
        super().__init__(fleet, work)
        self.waiting: dict[str, Proc] = {}
        self.prestarted = False
        """whether this scenario's pulls were started before the clock (said in its notes)"""

    def prestart(self, mirror: str | None, logs: Mapping[str, Path]) -> str | None:
        """Start every node's pull with ``--ready``; wait until each is set up (or failed)."""
        ready = {h.role: self.node_dir(h) / "pull-ready" for h in self.fleet.plan.nodes}
        for host in self.fleet.plan.nodes:
            ready[host.role].unlink(missing_ok=True)
            argv = [*self.pull_argv(host, mirror), "--ready", str(ready[host.role])]
            self.waiting[host.role] = self.fleet.procs.spawn(host.netns, argv, log=logs[host.role])
        deadline = time.monotonic() + _START_TIMEOUT
        pending = set(self.waiting)
        while pending and time.monotonic() < deadline:
            for role in list(pending):
                if ready[role].exists():
                    pending.discard(role)
                elif (rc := self.waiting[role].poll()) is not None:
                    return f"{role}: lightpull exited with {rc} before its start"
            time.sleep(0.02)
        if pending:
            return f"lightpull not ready after {_START_TIMEOUT:.0f} s: {', '.join(sorted(pending))}"
        return None

    def start_pulls(self, mirror: str | None, logs: Mapping[str, Path]) -> dict[str, Proc]:
        """Tell every waiting pull to go (SIGUSR1), or start it now if it was not prestarted."""
        if not self.waiting:
            return super().start_pulls(mirror, logs)
        started, self.waiting = self.waiting, {}
        self.prestarted = True
        for proc in started.values():
            self.fleet.procs.signal(proc, signal.SIGUSR1)
        return started

    def notes(self, logs: Mapping[str, Path]) -> list[str]:
        if not self.prestarted:
            return []
        return [
            "lightpull started before the rollout's clock (interpreter, imports, HTTP opener; "
            "waiting for SIGUSR1 at the clock); skopeo, ctr and aria2c start at the clock"
        ]

    def stop(self) -> None:
        self.fleet.procs.stop(list(self.waiting.values()))
        self.waiting.clear()

    def pull_argv(self, host: Host, mirror: str | None) -> list[str]:
        if mirror is None:
            base, name = f"http://{self.fleet.origin.address}", REPOSITORY
        else:
            base, name = f"http://{mirror}", f"{self.fleet.upstream_name}/{REPOSITORY}"
        creds = self.fleet.origin.credentials()
        user = [] if creds is None else ["--user", creds]
        return [sys.executable, str(LIGHTPULL), *user, base, name, self.fleet.tag, str(self.node_dir(host) / "pull")]

    def files(self, host: Host) -> dict[str, Path]:
        return layout_files(self.node_dir(host) / "pull", self.fleet.blobs)


_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float | None:
    """``1m2.5s``, ``218.677118ms`` -> seconds (Go's ``time.Duration.String``)."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _GO_UNITS[u] for n, u in parts)


def _unpack_seconds(log: str) -> float | None:
    for line in reversed(log.splitlines()):
        if line.startswith("done: "):
            return parse_go_duration(line[len("done: ") :].strip())
    return None


def make_client(fleet: Fleet, work: Path) -> PullClient:
    if fleet.origin.credentials() is not None and fleet.client != "light":
        raise ValueError(f"a private origin is pulled with --client light only, not {fleet.client}")
    if fleet.client == "ctr":
        return CtrClient(fleet, work)
    if fleet.client == "skopeo":
        return PullClient(fleet, work)
    if fleet.client == "light":
        return LightClient(fleet, work)
    raise ValueError(f"unknown client {fleet.client!r}; choose from {', '.join(CLIENTS)}")
