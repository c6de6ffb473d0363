"""What every scenario gets (the lab, the origin, the image) and what it returns."""

from __future__ import annotations

import hashlib
import shutil
import statistics
import subprocess
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench.fleet.bounds import LowerBound, kumar_ross
from bench.fleet.cpu import DataPlaneCpu, cpu_ms_per_mib
from bench.fleet.netns import Host, LabPlan
from bench.fleet.origin import REPOSITORY, Origin
from bench.fleet.procs import Proc, ProcessSet
from bench.fleet.shaping import class_bytes
from shoal.demo.imagegen import BlobInfo

__all__ = [
    "Fleet",
    "NodeOutcome",
    "ScenarioResult",
    "cpu_times",
    "verify_blobs",
    "wait_for_nodes",
]


@dataclass
class Fleet:
    """The running lab a scenario pulls in, and the rollout's knobs."""

    plan: LabPlan
    procs: ProcessSet
    origin: Origin
    tag: str
    blobs: list[BlobInfo]
    """What a node must end up with: the config and layers as the registry serves them."""
    workdir: Path
    timeout: float = 1800.0
    kill_fraction: float = 0.0
    kill_after: float | None = None
    seed: int = 0
    upstream_name: str = "registry.bench"
    """The registry name Shoal's agents know the origin by (image refs use it as host)."""
    client: str = "skopeo"
    """The client every node pulls with: ``skopeo``, ``ctr`` or ``light`` (see ``clients.py``)."""
    agent_args: tuple[str, ...] = ()
    """More flags for every Shoal agent (``--agent-arg``)."""
    capture: Path | None = None
    """A directory: each Shoal scenario's rollout is captured on the lab's bridge, the node
    network without the origin's link, into ``<scenario>.pcap`` (what a listener sees)."""

    @property
    def image_bytes(self) -> int:
        return sum(b.size for b in self.blobs)

    @property
    def origin_ref(self) -> str:
        return f"{self.origin.address}/{REPOSITORY}:{self.tag}"

    def lower_bound(self) -> LowerBound:
        nodes = self.plan.nodes
        return kumar_ross(
            self.image_bytes,
            self.plan.origin.upload_bps,
            [h.upload_bps for h in nodes],
            [h.download_bps for h in nodes],
        )

    def scenario_dir(self, name: str) -> Path:
        path = self.workdir / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path


@dataclass
class NodeOutcome:
    node: str
    seconds: float | None
    """Since the rollout started; None if the node never finished."""
    ok: bool
    error: str | None = None
    killed: bool = False


@dataclass
class ScenarioResult:
    scenario: str
    nodes: int
    image_bytes: int
    node_bps: int
    origin_bps: int
    heterogeneous: bool
    bound: LowerBound
    client: str = "skopeo"
    """What pulled on the nodes: ``skopeo``, ``ctr`` (a containerd per node) or ``aria2c``."""
    outcomes: list[NodeOutcome] = field(default_factory=list)
    origin_egress_bytes: int | None = None
    """Payload bytes the origin served (registry log / seeder's own count)."""
    origin_wire_bytes: int = 0
    """Bytes through the origin's upload cap, TCP/IP headers included."""
    cpu_busy: float = 0.0
    """Share of all CPUs busy during the rollout (1.0: the machine, not the links, bound it)."""
    data_plane: DataPlaneCpu | None = None
    """CPU of the per-node data-plane processes (agents, aria2 leechers) during the rollout."""
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def measured(self) -> list[NodeOutcome]:
        return [o for o in self.outcomes if not o.killed]

    @property
    def failures(self) -> list[NodeOutcome]:
        return [o for o in self.measured if not o.ok]

    def _times(self) -> list[float]:
        return sorted(o.seconds for o in self.measured if o.ok and o.seconds is not None)

    @property
    def slowest(self) -> float | None:
        times = self._times()
        return times[-1] if times and not self.failures and self.error is None else None

    def percentile(self, q: float) -> float | None:
        times = self._times()
        if not times:
            return None
        if len(times) == 1:
            return times[0]
        return statistics.quantiles(times, n=100, method="inclusive")[round(q * 100) - 1]

    @property
    def ratio(self) -> float | None:
        slowest = self.slowest
        return None if slowest is None else slowest / self.bound.seconds

    @property
    def cpu_ms_per_mib(self) -> float | None:
        """Data-plane CPU milliseconds per MiB delivered (N x image), None if not measured."""
        if self.data_plane is None:
            return None
        return cpu_ms_per_mib(self.data_plane.seconds, self.nodes, self.image_bytes)

    @property
    def egress_ratio(self) -> float | None:
        if self.origin_egress_bytes is None or not self.image_bytes:
            return None
        return self.origin_egress_bytes / self.image_bytes


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def new_result(fleet: Fleet, name: str) -> ScenarioResult:
    plan = fleet.plan
    return ScenarioResult(
        scenario=name,
        nodes=len(plan.nodes),
        image_bytes=fleet.image_bytes,
        node_bps=max(h.upload_bps for h in plan.nodes),
        origin_bps=plan.origin.upload_bps,
        heterogeneous=len({h.upload_bps for h in plan.nodes}) > 1,
        bound=fleet.lower_bound(),
        client=fleet.client,
    )


class Rollout:
    """Times one rollout: CPU use and the origin's upload counter from start to finish."""

    def __init__(self, fleet: Fleet, result: ScenarioResult) -> None:
        self.fleet = fleet
        self.result = result
        self.t0 = 0.0
        self._cpu0 = (0.0, 0.0)
        self._wire0 = 0

    def start(self) -> float:
        self._cpu0 = cpu_times()
        self._wire0 = class_bytes(self.fleet.plan.origin)
        self.t0 = time.monotonic()
        return self.t0

    def finish(self) -> None:
        busy, total = cpu_times()
        dt = total - self._cpu0[1]
        self.result.cpu_busy = (busy - self._cpu0[0]) / dt if dt > 0 else 0.0
        self.result.origin_wire_bytes = class_bytes(self.fleet.plan.origin) - self._wire0


def wait_for_nodes(
    clients: Mapping[str, Proc],
    t0: float,
    timeout: float,
    *,
    done_files: Mapping[str, Path] | None = None,
    on_tick: list[tuple[float, object]] | None = None,
) -> dict[str, tuple[float | None, int | None]]:
    """Poll until every node is done: its client exited, or its ``done_files`` entry exists.

    Returns node -> (seconds since ``t0`` or None on timeout, exit code or None).
    ``on_tick`` holds (seconds, callable) pairs run once when that much time has passed.
    """
    pending = set(clients)
    out: dict[str, tuple[float | None, int | None]] = {}
    ticks = sorted(on_tick or [], key=lambda t: t[0])
    while pending:
        now = time.monotonic()
        elapsed = now - t0
        while ticks and ticks[0][0] <= elapsed:
            action = ticks.pop(0)[1]
            if callable(action):
                action()
        for node in list(pending):
            proc = clients[node]
            if done_files is not None and done_files[node].exists():
                out[node] = (elapsed, 0)
                pending.discard(node)
            elif (rc := proc.poll()) is not None:
                out[node] = (elapsed if rc == 0 and done_files is None else None, rc)
                pending.discard(node)
        if elapsed > timeout:
            for node in pending:
                out[node] = (None, None)
            break
        time.sleep(0.05)
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def verify_blobs(files: Mapping[str, Mapping[str, Path]]) -> dict[str, str | None]:
    """node -> None if every expected digest's file hashes right, else what is wrong."""
    jobs = [(node, digest, path) for node, m in files.items() for digest, path in m.items()]

    def check(job: tuple[str, str, Path]) -> tuple[str, str | None]:
        node, digest, path = job
        if not path.is_file():
            return node, f"missing {digest[:19]}"
        got = _sha256(path)
        return node, None if got == digest else f"{digest[:19]} hashes to {got[:19]}"

    out: dict[str, str | None] = dict.fromkeys(files)
    with ThreadPoolExecutor(2) as pool:
        for node, problem in pool.map(check, jobs):
            if problem is not None and out[node] is None:
                out[node] = problem
    return out


def layout_files(layout: Path, blobs: list[BlobInfo]) -> dict[str, Path]:
    return {b.digest: layout / "blobs" / "sha256" / b.digest.split(":", 1)[1] for b in blobs}


def skopeo_pull_argv(src: str, dest: Path, tag: str) -> list[str]:
    """A plain skopeo pull into an OCI layout that keeps the blobs byte-identical."""
    return [
        "skopeo",
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--dest-oci-accept-uncompressed-layers",
        "--preserve-digests",
        f"docker://{src}",
        f"oci:{dest}:{tag}",
    ]


def collect(
    fleet: Fleet,
    result: ScenarioResult,
    finished: Mapping[str, tuple[float | None, int | None]],
    files: Mapping[str, Mapping[str, Path]],
    *,
    killed: frozenset[str] = frozenset(),
    logs: Mapping[str, Path] | None = None,
    extra: Mapping[str, str | None] | None = None,
) -> None:
    """Turn completion times and on-disk blobs into NodeOutcomes (killed nodes not hashed).

    ``extra``: node -> a client-side problem found besides the hashes (``ctr image check``).
    """
    alive = {n: f for n, f in files.items() if n not in killed and finished[n][0] is not None}
    problems = verify_blobs(alive)
    for node, problem in (extra or {}).items():
        if node in alive and problem is not None and problems.get(node) is None:
            problems[node] = problem
    for host in fleet.plan.nodes:
        node = host.role
        seconds, rc = finished[node]
        if node in killed:
            result.outcomes.append(NodeOutcome(node, seconds, False, "agent killed", killed=True))
            continue
        error = problems.get(node)
        if seconds is None:
            error = "timed out" if rc is None else f"client exited {rc}"
            if logs and node in logs and logs[node].exists():
                tail = logs[node].read_text(errors="replace").strip().splitlines()[-1:]
                error += f": {tail[0][:200]}" if tail else ""
        result.outcomes.append(NodeOutcome(node, seconds, error is None, error))


def node_hosts(fleet: Fleet) -> dict[str, Host]:
    return {h.role: h for h in fleet.plan.nodes}


def run_quiet(argv: list[str]) -> None:
    subprocess.run(argv, capture_output=True, check=False, timeout=60)
