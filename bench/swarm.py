"""Swarm on loopback, side by side in one run: ``python -m bench.swarm``.

The same generated image (default 256 MiB, 4 layers) pulled at once by N clients (default 10):

1. direct: every client pulls from the origin itself;
2. Shoal P2P: a scheduler and N agents (separate processes on 127.0.0.x), each client
   pulls through its own agent.

Prints wall time of the rollout (slowest client) for both, their ratio, and the origin's
blob egress as a multiple of the image. Loopback has no bandwidth limits, so this measures
the CPU cost of the swarm on this machine's cores; ``bench/fleet`` measures shaped links.
With ``--origin-rate`` the origin's upload is capped, which is what a registry under a
rollout looks like.

``--tls-compare`` instead runs the Shoal rollout twice on the same image, the peer wire in
clear and in TLS 1.3 (node certificates from a throwaway CA), and prints for each the wall
time and the agents' CPU per MiB delivered (utime + stime of every agent process at the end
of the rollout, over N x the image), and the ratios: what encryption costs the data plane.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from shoal.core.units import format_bytes, parse_size
from shoal.demo.fleet import LocalFleet
from shoal.demo.imagegen import GeneratedImage, generate_image
from shoal.demo.origin import DemoOrigin
from shoal.demo.puller import pull_image

REGISTRY = "registry.bench"
REPOSITORY = "bench/app"


async def _rollout(bases: list[str], name: str) -> float:
    started = time.monotonic()
    results = await asyncio.gather(*(pull_image(base, name, "v1") for base in bases))
    assert len({r.blob_bytes for r in results}) == 1
    return time.monotonic() - started


async def _direct(image: GeneratedImage, nodes: int, rate: int | None) -> tuple[float, int]:
    origin = DemoOrigin({REPOSITORY: image}, upload_rate=rate)
    url = await origin.start()
    try:
        seconds = await _rollout([url] * nodes, REPOSITORY)
        return seconds, origin.blob_bytes_served
    finally:
        await origin.stop()


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _p2p(
    image: GeneratedImage, nodes: int, rate: int | None, work: Path, *, tls: bool = True
) -> tuple[float, int, float]:
    """(rollout seconds, origin bytes, the agents' CPU seconds)"""
    origin = DemoOrigin({REPOSITORY: image}, upload_rate=rate)
    url = await origin.start()
    fleet = LocalFleet(work, nodes=nodes, registries={REGISTRY: url}, tls=tls)
    try:
        await asyncio.to_thread(fleet.start)
        before = sum(_cpu_seconds(n.process.pid) for n in fleet.nodes)
        seconds = await _rollout([n.url for n in fleet.nodes], f"{REGISTRY}/{REPOSITORY}")
        cpu = sum(_cpu_seconds(n.process.pid) for n in fleet.nodes) - before
        return seconds, origin.blob_bytes_served, cpu
    finally:
        await asyncio.to_thread(fleet.stop)
        await origin.stop()


def _tls_compare(image: GeneratedImage, nodes: int, rate: int | None, work: Path) -> None:
    delivered_mib = nodes * image.blob_bytes / (1 << 20)
    runs = {}
    for tls in (False, True):
        seconds, _, cpu = asyncio.run(_p2p(image, nodes, rate, work / f"fleet-{'tls' if tls else 'clear'}", tls=tls))
        runs[tls] = (seconds, 1000 * cpu / delivered_mib)
        label = "TLS 1.3" if tls else "clear  "
        print(f"  shoal p2p, peer wire {label} {seconds:7.2f} s   agents' CPU {runs[tls][1]:6.2f} ms/MiB delivered")
    (clear_s, clear_cpu), (tls_s, tls_cpu) = runs[False], runs[True]
    print(
        f"  TLS / clear: time {tls_s / clear_s:.2f}x;  CPU {tls_cpu / clear_cpu:.2f}x "
        f"({tls_cpu - clear_cpu:+.2f} ms/MiB delivered)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--size", default="256M")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--origin-rate", default="0", help="cap the origin's upload, bytes/s (e.g. 100M); 0: none")
    parser.add_argument(
        "--tls-compare", action="store_true", help="the Shoal rollout with the peer wire in clear, then in TLS"
    )
    opts = parser.parse_args()
    rate = parse_size(opts.origin_rate) or None
    with tempfile.TemporaryDirectory(prefix="shoal-bench-swarm-") as tmp:
        work = Path(tmp)
        image = generate_image(work / "image", size=parse_size(opts.size), layers=opts.layers, tag="v1")
        size = image.blob_bytes
        print(
            f"{opts.nodes} simultaneous pulls of a {format_bytes(size)} image ({opts.layers} layers), "
            f"origin cap {format_bytes(rate) + '/s' if rate else 'none'}, loopback"
        )
        if opts.tls_compare:
            _tls_compare(image, opts.nodes, rate, work)
            return
        direct_s, direct_bytes = asyncio.run(_direct(image, opts.nodes, rate))
        p2p_s, p2p_bytes, _ = asyncio.run(_p2p(image, opts.nodes, rate, work / "fleet"))
    print(f"  direct     {direct_s:7.2f} s   origin egress {direct_bytes / size:5.2f}x the image")
    print(f"  shoal p2p  {p2p_s:7.2f} s   origin egress {p2p_bytes / size:5.2f}x the image")
    print(
        f"  p2p time / direct time: {p2p_s / direct_s:.2f}x;"
        f"  origin bytes p2p / direct: {p2p_bytes / direct_bytes:.2f}x"
    )


if __name__ == "__main__":
    main()
