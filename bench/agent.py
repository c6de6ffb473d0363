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
3. Peak RSS (VmHWM) of the ``shoal agent`` process serving a 2 GiB blob cold, then warm.

The registry's storage and the agent's cache sit on tmpfs when we may mount one (root), so
both servers read from memory and the disk does not decide the comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from shoal.demo.imagegen import generate_image
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
    """``shoal agent`` as a subprocess, on asyncio's loop (the default) or on uvloop."""

    def __init__(self, workdir: Path, registry_url: str, cache_dir: Path, *, loop: str = "uvloop") -> None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for child in cache_dir.iterdir():  # a cold cache (the directory may be a mount point)
            shutil.rmtree(child, ignore_errors=True)
        self.port = free_port()
        args = ["agent", "--listen", f"127.0.0.1:{self.port}", "--registry", f"{REG}={registry_url}"]
        args += ["--cache-dir", str(cache_dir), "--download-pattern", "source", "--ratelimit", "0"]
        self.process = ManagedProcess(
            [sys.executable, "-m", "shoal", *args],
            stdout=workdir / f"agent-{self.port}.log",
            env={"SHOAL_EVENT_LOOP": loop},
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until(self._ready, what="shoal agent", timeout=30, process=self.process)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def status(self, key: str) -> int:
        """A /proc/PID/status value in bytes (VmHWM, VmRSS)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def stop(self) -> None:
        self.process.stop()


def curl(url: str) -> tuple[int, float]:
    """(bytes, seconds) for one GET, body discarded."""
    out = subprocess.run(
        ["curl", "-sf", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout.split()
    return int(out[0]), float(out[1])


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


def cache_miss(work: Path, registry: DistributionRegistry, cache: Path, blob: Blob, rounds: int) -> None:
    print(f"\n(2) cache miss, {blob.size // MiB} MiB blob: direct GET vs through a cold agent, median of {rounds}")
    times: dict[str, list[float]] = {"direct": [], "agent (uvloop)": [], "agent (asyncio)": []}
    for _ in range(rounds):
        times["direct"].append(curl(blob_url(registry.url, blob, False))[1])
        for loop in ("uvloop", "asyncio"):
            agent = AgentProcess(work, registry.url, cache, loop=loop)
            try:
                got, seconds = curl(blob_url(agent.url, blob, True))
                assert got == blob.size
                times[f"agent ({loop})"].append(seconds)
            finally:
                agent.stop()
    base = statistics.median(times["direct"])
    for name, values in times.items():
        t = statistics.median(values)
        print(f"    {name:<18} {t:6.2f} s  ({blob.size / t / 1e6:5.0f} MB/s)   {t / base:5.2f}x the direct time")


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
    parser.add_argument(
        "--only",
        default="hit,miss,pull,rss",
        help="comma-separated sections to run: hit (1), miss (2), pull (2b), rss (3)",
    )
    opts = parser.parse_args()
    only = set(opts.only.split(","))
    if unknown := only - {"hit", "miss", "pull", "rss"}:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="shoal-bench-agent-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        total = opts.hit_size + opts.miss_size + opts.rss_size
        on_tmpfs = stack.enter_context(tmpfs(work / "registry" / "storage", f"{total + opts.miss_size + 256}m"))
        stack.enter_context(tmpfs(work / "cache", f"{max(opts.hit_size, opts.miss_size, opts.rss_size) + 256}m"))
        print(f"registry storage and agent cache on {'tmpfs' if on_tmpfs else 'disk'}; {os.cpu_count()} CPUs")
        registry = stack.enter_context(DistributionRegistry(work / "registry"))
        hit, miss, rss = asyncio.run(_upload_all(registry.url, opts.hit_size, opts.miss_size, opts.rss_size))
        print(f"uploaded {total} MiB in {time.monotonic() - started:.0f} s")
        if "hit" in only:
            cache_hit(work, registry, work / "cache", hit, opts.rounds)
        if "miss" in only:
            cache_miss(work, registry, work / "cache", miss, opts.rounds)
        if "pull" in only:
            image_pull(work, registry, work / "cache", opts.miss_size, opts.rounds)
        if "rss" in only:
            peak_rss(work, registry, work / "cache", rss)
    print(f"\ntotal {time.monotonic() - started:.0f} s")


async def _upload_all(url: str, *sizes_mib: int) -> list[Blob]:
    return [await upload_blob(url, size * MiB, seed) for seed, size in enumerate(sizes_mib, start=1)]


if __name__ == "__main__":
    main()
