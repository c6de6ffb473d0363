"""Agent benchmarks, side by side in one run: ``python -m bench.agent``.

1. Cache-hit throughput: the same 1 GiB blob served by docker-registry and by the agent
   (warm cache) to the same client (curl, discarding bytes); 3 rounds each, median MB/s.
   The agent runs on asyncio's own loop (what ``shoal agent`` uses: it has ``loop.sendfile``)
   and, for comparison, on uvloop (``SHOAL_EVENT_LOOP=uvloop``), which has no sendfile, so
   aiohttp's FileResponse falls back to chunked reads and writes.
2. Cache miss: a raw GET of a 512 MiB blob directly from the registry vs through a cold
   agent (fresh cache each round); ratio of median times.
   2b. The same as a whole image pull with a real client: skopeo pulls a 512 MiB, 4-layer
   image directly vs through a cold agent.
   2c. The same GET with the origin in a network namespace behind a 1 Gbit/s HTB cap (the
   lab's ``bench.fleet`` namespaces and shaping), direct vs through a cold agent in a node
   namespace: what a real link leaves of the agent's cost.
3. Peak RSS (VmHWM) of the ``shoal agent`` process serving a 2 GiB blob cold, then warm.

For the misses it also prints the time to the first byte and the CPU seconds of each process
(registry, agent, curl): on a 2-core machine the sum decides the wall time.

The registry's storage and the agent's cache sit on tmpfs when we may mount one (root), so
both servers read from memory and the disk does not decide the comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.fleet.netns import Lab, plan_lab
from bench.fleet.origin import Origin
from bench.fleet.procs import ProcessSet
from bench.fleet.shaping import apply_shaping, format_rate, parse_rate
from shoal.demo.imagegen import generate_image
from shoal.nodeconfig.ready import agent_ready
from shoal.testing.procs import ManagedProcess, free_port, wait_until
from shoal.testing.registry import DistributionRegistry
from shoal.testing.skopeo import skopeo_pull

MiB = 1 << 20
GiB = 1 << 30
REG = "registry.test"
REPO = "bench/blob"


@dataclass(frozen=True, slots=True)
class Blob:
    digest: str
    size: int


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[bool]:
    """Mount a tmpfs at ``path`` if we can; yields whether it is one."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and (
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=False).returncode == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


async def _chunks(size: int, seed: int, sink: hashlib._Hash | None) -> AsyncIterator[bytes]:
    block = hashlib.shake_256(seed.to_bytes(4, "big")).digest(MiB)
    sent = 0
    while sent < size:
        chunk = (sent // MiB).to_bytes(8, "big") + block[8 : min(MiB, size - sent)]
        if sink is not None:
            sink.update(chunk)
        sent += len(chunk)
        yield chunk


async def upload_blob(registry_url: str, size: int, seed: int) -> Blob:
    """Monolithic upload of ``size`` incompressible-enough bytes (a random MiB, numbered)."""
    hasher = hashlib.sha256()
    async for _ in _chunks(size, seed, hasher):
        pass
    digest = f"sha256:{hasher.hexdigest()}"
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{registry_url}/v2/{REPO}/blobs/uploads/") as resp:
            assert resp.status == 202, resp.status
            location = resp.headers["Location"]
        target = location if location.startswith("http") else f"{registry_url}{location}"
        sep = "&" if "?" in target else "?"
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        async with session.put(f"{target}{sep}digest={digest}", data=_chunks(size, seed, None), headers=headers) as r:
            assert r.status == 201, (r.status, await r.text())
    return Blob(digest, size)


class AgentProcess:
    """``shoal agent`` as a subprocess, on asyncio's loop (the default) or on uvloop; in the
    network namespace ``netns`` if given (then reached only from inside it)."""

    def __init__(
        self,
        workdir: Path,
        registry_url: str,
        cache_dir: Path,
        *,
        loop: str = "uvloop",
        netns: str | None = None,
        python: str = sys.executable,
        scheduler: SchedulerProcess | None = None,
    ) -> None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for child in cache_dir.iterdir():  # a cold cache (the directory may be a mount point)
            shutil.rmtree(child, ignore_errors=True)
        self.netns = netns
        self.port = free_port()
        args = ["agent", "--listen", f"127.0.0.1:{self.port}", "--registry", f"{REG}={registry_url}"]
        args += ["--cache-dir", str(cache_dir), "--ratelimit", "0"]
        if scheduler is None:
            args += ["--download-pattern", "source"]
        else:  # p2p, a swarm of one: what a single node pays for the scheduler's company
            args += [
                "--download-pattern",
                "p2p",
                "--scheduler",
                scheduler.url,
                "--peer-token-file",
                str(scheduler.token),
            ]
        prefix = ["ip", "netns", "exec", netns] if netns else []
        self.process = ManagedProcess(
            [*prefix, python, "-m", "shoal", *args],  # ``ip netns exec`` execs: the PID is the agent's
            stdout=workdir / f"agent-{self.port}.log",
            env={"SHOAL_EVENT_LOOP": loop},
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until(self._ready, what="shoal agent", timeout=30, process=self.process)

    def _ready(self) -> bool:
        if self.netns is not None:
            check = subprocess.run(
                ["ip", "netns", "exec", self.netns, "curl", "-sf", "-o", "/dev/null", f"{self.url}/healthz"],
                check=False,
                timeout=10,
            )
            return check.returncode == 0
        return agent_ready(f"127.0.0.1:{self.port}", timeout=1)

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def status(self, key: str) -> int:
        """A /proc/PID/status value in bytes (VmHWM, VmRSS)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def stop(self) -> None:
        self.process.stop()


class SchedulerProcess:
    """``shoal scheduler`` on loopback, with a peer token of its own."""

    def __init__(self, workdir: Path, python: str = sys.executable) -> None:
        self.token = workdir / "peer-token"
        self.token.write_text("bench-agent-peer-token\n")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = ManagedProcess(
            [
                python,
                "-m",
                "shoal",
                "scheduler",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--peer-token-file",
                str(self.token),
            ],
            stdout=workdir / f"scheduler-{self.port}.log",
        )
        wait_until(self._ready, what="shoal scheduler", timeout=30, process=self.process)

    def _ready(self) -> bool:
        return agent_ready(f"127.0.0.1:{self.port}", timeout=1)

    def stop(self) -> None:
        self.process.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (all its threads, live and ended)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Get:
    """One GET by curl: bytes, seconds to the first byte and to the last, curl's own CPU."""

    size: int
    first_byte: float
    seconds: float
    cpu: float


def curl_get(url: str, netns: str | None = None) -> Get:
    """One GET, body discarded (curl inside ``netns`` if given)."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [*prefix, "curl", "-sf", "-o", "/dev/null", "-w", "%{size_download} %{time_starttransfer} %{time_total}", url],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout.split()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return Get(int(out[0]), float(out[1]), float(out[2]), spent)


def curl(url: str) -> tuple[int, float]:
    """(bytes, seconds) for one GET, body discarded."""
    got = curl_get(url)
    return got.size, got.seconds


def blob_url(base: str, blob: Blob, via_agent: bool) -> str:
    return f"{base}/v2/{REG}/{REPO}/blobs/{blob.digest}" if via_agent else f"{base}/v2/{REPO}/blobs/{blob.digest}"


def throughput(url: str, size: int, rounds: int) -> float:
    """Median MB/s over ``rounds`` GETs."""
    speeds = []
    for _ in range(rounds):
        got, seconds = curl(url)
        assert got == size, (got, size)
        speeds.append(size / seconds / 1e6)
    return statistics.median(speeds)


def cache_hit(work: Path, registry: DistributionRegistry, cache: Path, blob: Blob, rounds: int) -> None:
    print(f"\n(1) cache-hit throughput, {blob.size // MiB} MiB blob, curl, median of {rounds}")
    results: dict[str, float] = {"registry": throughput(blob_url(registry.url, blob, False), blob.size, rounds)}
    for loop in ("uvloop", "asyncio"):
        agent = AgentProcess(work, registry.url, cache, loop=loop)
        try:
            url = blob_url(agent.url, blob, True)
            curl(url)  # fill the cache
            results[f"agent ({loop})"] = throughput(url, blob.size, rounds)
        finally:
            agent.stop()
    base = results["registry"]
    for name, speed in results.items():
        print(f"    {name:<18} {speed:8.0f} MB/s   {speed / base:5.2f}x the registry")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each live thread of ``pid`` (schedstat: exact, where the tick counts of
    ``/proc/*/task/*/stat`` lose a part here)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(tid)] = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            continue  # it ended meanwhile
    return out


class ThreadSampler:
    """Each thread's CPU seconds in a process over a span, sampled every ``interval`` from
    another thread: a thread that ends during the span counts up to its last sample. The
    busiest thread is a cold miss's critical path where a core is free for each thread."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.before = thread_cpu(pid)
        self.last: dict[int, float] = dict(self.before)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="thread sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.last.update(thread_cpu(self.pid))

    def stop(self) -> float:
        """Stop sampling; returns the CPU seconds of the busiest thread over the span."""
        self._stop.set()
        self._thread.join()
        self.last.update(thread_cpu(self.pid))
        return max((cpu - self.before.get(tid, 0.0) for tid, cpu in self.last.items()), default=0.0)


@dataclass(frozen=True, slots=True)
class MissRound:
    """One cold GET and the CPU seconds each process spent on it (and the agent's busiest
    thread, when sampled)."""

    get: Get
    registry_cpu: float
    agent_cpu: float
    agent_busiest: float | None = None


def miss_round(
    blob: Blob,
    registry_url: str,
    registry_pid: int,
    agent: AgentProcess | None,
    netns: str | None = None,
    sample_threads: bool = False,
) -> MissRound:
    """One GET of ``blob``, straight from the registry or through ``agent`` (fresh, cold)."""
    registry_before = cpu_seconds(registry_pid)
    agent_before = agent.cpu() if agent is not None else 0.0
    sampler = ThreadSampler(agent.process.pid) if agent is not None and sample_threads else None
    url = blob_url(agent.url, blob, True) if agent is not None else blob_url(registry_url, blob, False)
    got = curl_get(url, netns)
    assert got.size == blob.size, (got.size, blob.size)
    time.sleep(0.05)  # the agent's commit and the registry's log line are past the last byte
    busiest = sampler.stop() if sampler is not None else None
    agent_cpu = agent.cpu() - agent_before if agent is not None else 0.0
    return MissRound(got, cpu_seconds(registry_pid) - registry_before, agent_cpu, busiest)


def print_misses(rounds: dict[str, list[MissRound]], size: int) -> None:
    base = statistics.median(r.get.seconds for r in rounds["direct"])
    for name, values in rounds.items():
        t = statistics.median(r.get.seconds for r in values)
        first = statistics.median(r.get.first_byte for r in values)
        cpus = [statistics.median(getattr(r, f) for r in values) for f in ("registry_cpu", "agent_cpu")]
        curl_cpu = statistics.median(r.get.cpu for r in values)
        sampled = [r.agent_busiest for r in values if r.agent_busiest is not None]
        busiest = f" (busiest thread {statistics.median(sampled):.2f})" if sampled else ""
        print(
            f"    {name:<18} {t:6.2f} s  ({size / t / 1e6:5.0f} MB/s)   {t / base:5.2f}x the direct time"
            f"   first byte {first * 1000:5.1f} ms   CPU s: registry {cpus[0]:.2f} agent {cpus[1]:.2f}{busiest}"
            f" curl {curl_cpu:.2f}   (all: {' '.join(f'{r.get.seconds:.2f}' for r in values)})"
        )
    print(f"    load average {os.getloadavg()[0]:.2f} at the end")


def parse_agents(text: str) -> dict[str, str]:
    """``--agents``: ``NAME=PYTHON,...`` (the interpreter decides which tree's agent runs)."""
    agents = {}
    for item in text.split(","):
        name, sep, python = item.partition("=")
        if not sep or not name or not python:
            raise ValueError(f"--agents wants NAME=PYTHON, not {item!r}")
        agents[name] = python
    return agents


def cache_miss(
    work: Path,
    registry: DistributionRegistry,
    cache: Path,
    blob: Blob,
    rounds: int,
    loops: Sequence[str],
    agents: dict[str, str],
    modes: Sequence[str] = ("source",),
    sample_threads: bool = False,
) -> None:
    """``modes``: ``source`` (a plain mirror) and/or ``p2p`` (a swarm of one: the agent and a
    fresh scheduler of the same tree each round)."""
    print(f"\n(2) cache miss, {blob.size // MiB} MiB blob: direct GET vs through a cold agent, median of {rounds}")
    assert registry.pid is not None
    kinds = [(name, python, loop, mode) for name, python in agents.items() for loop in loops for mode in modes]

    def label(name: str, loop: str, mode: str) -> str:
        return f"{name} ({loop}{', p2p' if mode == 'p2p' else ''})"

    results: dict[str, list[MissRound]] = {"direct": [], **{label(n, lo, m): [] for n, _, lo, m in kinds}}
    for i in range(rounds):
        results["direct"].append(miss_round(blob, registry.url, registry.pid, None))
        for name, python, loop, mode in kinds[i % len(kinds) :] + kinds[: i % len(kinds)]:  # each first in turn
            with ExitStack() as stack:
                scheduler = None
                if mode == "p2p":
                    scheduler = SchedulerProcess(work, python)
                    stack.callback(scheduler.stop)
                agent = AgentProcess(work, registry.url, cache, loop=loop, python=python, scheduler=scheduler)
                stack.callback(agent.stop)
                results[label(name, loop, mode)].append(
                    miss_round(blob, registry.url, registry.pid, agent, sample_threads=sample_threads)
                )
    print_misses(results, blob.size)


def shaped_miss(
    work: Path, storage: Path, cache: Path, blob: Blob, rounds: int, rate: str, agents: dict[str, str]
) -> None:
    """(2c): the origin in a namespace behind an HTB cap; curl and the agent in a node's."""
    plan = plan_lab(1, node_bps=0, origin_bps=parse_rate(rate))
    print(
        f"\n(2c) cache miss, {blob.size // MiB} MiB blob, origin shaped to {format_rate(plan.origin.upload_bps)}:"
        f" direct GET vs through a cold agent, median of {rounds}"
    )
    procs = ProcessSet()
    node = plan.nodes[0].netns
    with Lab(plan):
        try:
            apply_shaping(plan)
            origin_dir = work / "shaped-origin"
            origin_dir.mkdir()
            (origin_dir / "storage").symlink_to(storage)  # the blob uploaded before, on tmpfs
            origin = Origin(plan.origin, origin_dir, procs)
            origin.start()
            assert origin.proc is not None
            url = f"http://{origin.address}"
            results: dict[str, list[MissRound]] = {"direct": [], **{f"{name} (asyncio)": [] for name in agents}}
            for _ in range(rounds):
                results["direct"].append(miss_round(blob, url, origin.proc.pid, None, node))
                for name, python in agents.items():
                    agent = AgentProcess(work, url, cache, loop="asyncio", netns=node, python=python)
                    try:
                        results[f"{name} (asyncio)"].append(miss_round(blob, url, origin.proc.pid, agent, node))
                    finally:
                        agent.stop()
            print_misses(results, blob.size)
        finally:
            procs.stop_all()


def image_pull(work: Path, registry: DistributionRegistry, cache: Path, size_mib: int, rounds: int) -> None:
    """A whole image pull with a real client (skopeo into an OCI layout), direct vs via a cold agent."""
    image = generate_image(work / "pull-image", size=size_mib * MiB, layers=4, tag="v1", seed=9)
    registry.push(image, "bench/app", "v1")
    print(
        f"\n(2b) cache miss, skopeo pull of a {size_mib} MiB 4-layer image: direct vs via a cold agent, "
        f"median of {rounds}"
    )
    times: dict[str, list[float]] = {"direct": [], "agent": []}
    for i in range(rounds):
        for name in ("direct", "agent"):
            dest = work / f"pulled-{name}-{i}"
            agent = AgentProcess(work, registry.url, cache, loop="asyncio") if name == "agent" else None
            ref = (
                f"{registry.host}/bench/app:v1"
                if agent is None
                else f"{agent.url.removeprefix('http://')}/{REG}/bench/app:v1"
            )
            try:
                started = time.monotonic()
                skopeo_pull(ref, dest, check=True, timeout=600)
                times[name].append(time.monotonic() - started)
            finally:
                if agent is not None:
                    agent.stop()
                shutil.rmtree(dest, ignore_errors=True)
    base = statistics.median(times["direct"])
    for name, values in times.items():
        t = statistics.median(values)
        print(f"    {name:<18} {t:6.2f} s   {t / base:5.2f}x the direct time")


def peak_rss(work: Path, registry: DistributionRegistry, cache: Path, blob: Blob) -> None:
    print(f"\n(3) agent peak RSS (VmHWM) serving a {blob.size // MiB} MiB blob")
    agent = AgentProcess(work, registry.url, cache)
    try:
        idle = agent.status("VmHWM")
        for phase in ("cold", "warm"):
            got, seconds = curl(blob_url(agent.url, blob, True))
            assert got == blob.size
            print(f"    {phase:<5} {seconds:6.2f} s   VmHWM {agent.status('VmHWM') / MiB:6.1f} MiB")
        growth = (agent.status("VmHWM") - idle) / MiB
        print(f"    idle VmHWM {idle / MiB:.1f} MiB; growth while serving {growth:.1f} MiB")
    finally:
        agent.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hit-size", type=int, default=1024, help="MiB, cache-hit blob")
    parser.add_argument("--miss-size", type=int, default=512, help="MiB, cache-miss blob")
    parser.add_argument("--rss-size", type=int, default=2048, help="MiB, RSS blob")
    parser.add_argument("--shape-rate", default="1gbit", help="the origin's cap in (2c), e.g. 1gbit, 500mbit")
    parser.add_argument(
        "--agents",
        default=f"agent={sys.executable}",
        help="agents compared side by side in (2) and (2c), NAME=PYTHON,...; e.g. "
        "main=/work/main/.venv/bin/python,new=.venv/bin/python (each interpreter runs its own tree's agent)",
    )
    parser.add_argument(
        "--miss-loops",
        default="uvloop,asyncio",
        help="comma-separated event loops of the agent in (2): uvloop, asyncio",
    )
    parser.add_argument(
        "--miss-modes",
        default="source",
        help="comma-separated download patterns in (2): source (plain mirror), p2p (with a scheduler, no peers)",
    )
    parser.add_argument(
        "--threads",
        action="store_true",
        help="in (2), sample the agent's threads' CPU every 10 ms and print its busiest thread's",
    )
    parser.add_argument(
        "--only",
        default="hit,miss,pull,shaped,rss",
        help="comma-separated sections to run: hit (1), miss (2), pull (2b), shaped (2c, root only), rss (3)",
    )
    opts = parser.parse_args()
    try:
        agents = parse_agents(opts.agents)
    except ValueError as exc:
        parser.error(str(exc))
    only = set(opts.only.split(","))
    if unknown := only - {"hit", "miss", "pull", "shaped", "rss"}:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if "shaped" in only and os.geteuid() != 0:
        parser.error("the shaped section (2c) creates network namespaces: run it as root")
    started = time.monotonic()
    sizes = {
        "hit": opts.hit_size if "hit" in only else 0,
        "miss": opts.miss_size if only & {"miss", "shaped"} else 0,
        "rss": opts.rss_size if "rss" in only else 0,
    }
    with tempfile.TemporaryDirectory(prefix="shoal-bench-agent-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        total = sum(sizes.values())
        storage = work / "registry" / "storage"
        on_tmpfs = stack.enter_context(tmpfs(storage, f"{total + opts.miss_size + 256}m"))
        stack.enter_context(tmpfs(work / "cache", f"{max(sizes.values()) + 256}m"))
        print(f"registry storage and agent cache on {'tmpfs' if on_tmpfs else 'disk'}; {os.cpu_count()} CPUs")
        registry = stack.enter_context(DistributionRegistry(work / "registry"))
        blobs = asyncio.run(_upload_all(registry.url, sizes))
        print(f"uploaded {total} MiB in {time.monotonic() - started:.0f} s")
        if "hit" in only:
            cache_hit(work, registry, work / "cache", blobs["hit"], opts.rounds)
        if "miss" in only:
            loops = opts.miss_loops.split(",")
            modes = opts.miss_modes.split(",")
            if unknown_modes := set(modes) - {"source", "p2p"}:
                parser.error(f"unknown --miss-modes: {', '.join(sorted(unknown_modes))}")
            cache_miss(work, registry, work / "cache", blobs["miss"], opts.rounds, loops, agents, modes, opts.threads)
        if "pull" in only:
            image_pull(work, registry, work / "cache", opts.miss_size, opts.rounds)
        if "shaped" in only:
            shaped_miss(work, storage, work / "cache", blobs["miss"], opts.rounds, opts.shape_rate, agents)
        if "rss" in only:
            peak_rss(work, registry, work / "cache", blobs["rss"])
    print(f"\ntotal {time.monotonic() - started:.0f} s")


async def _upload_all(url: str, sizes_mib: dict[str, int]) -> dict[str, Blob]:
    """Each blob asked for (size > 0), with its own seed so no two are alike."""
    return {
        name: await upload_blob(url, size * MiB, seed)
        for seed, (name, size) in enumerate(sizes_mib.items(), start=1)
        if size > 0
    }


if __name__ == "__main__":
    main()
