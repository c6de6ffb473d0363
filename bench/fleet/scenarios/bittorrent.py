"""Scenario 4, BitTorrent baseline: aria2 leechers, an opentracker, the origin as seeder.

The torrent holds the image's blobs (the same bytes the registry serves) as one multi-file
torrent. The seeder runs in the origin namespace, so the origin's tc cap is its only upload
limit (no aria2 rate limits anywhere). The tracker runs in the svc namespace with a
whitelist holding only our info-hash (Debian's opentracker needs one). A node is done when
aria2's ``--on-bt-download-complete`` hook fires; it keeps seeding until everyone is done.
Origin egress is the seeder's own upload count (aria2 JSON-RPC ``uploadLength``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from bench.fleet.bencode import info_hash
from bench.fleet.cpu import CpuMeter
from bench.fleet.origin import netns_run
from bench.fleet.procs import Proc
from bench.fleet.scenarios.base import (
    Fleet,
    Rollout,
    ScenarioResult,
    collect,
    new_result,
    wait_for_nodes,
)

__all__ = ["run_bittorrent"]

TRACKER_PORT = 6969
PEER_PORT = 6881
RPC_PORT = 6800
NAME = "image"


def _piece_exponent(size: int) -> int:
    """About 1000 pieces, between 256 KiB and 4 MiB."""
    exp = 18
    while exp < 22 and size >> exp > 1000:
        exp += 1
    return exp


def _aria2_common(dir_: Path) -> list[str]:
    return [
        "aria2c",
        f"--dir={dir_}",
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=true",
        "--disable-ipv6=true",
        f"--listen-port={PEER_PORT}",
        "--seed-ratio=0.0",
        "--file-allocation=none",
        "--summary-interval=0",
        "--console-log-level=warn",
        "--bt-max-peers=0",
        "--max-overall-upload-limit=0",
        "--bt-tracker-interval=5",
        "--check-certificate=false",
    ]


def _seeder_upload(fleet: Fleet) -> int | None:
    body = json.dumps({"jsonrpc": "2.0", "id": "q", "method": "aria2.tellActive", "params": [["uploadLength"]]})
    proc = netns_run(
        fleet.plan.origin.netns,
        ["curl", "-s", "-d", body, f"http://127.0.0.1:{RPC_PORT}/jsonrpc"],
        timeout=10,
    )
    try:
        return sum(int(t["uploadLength"]) for t in json.loads(proc.stdout)["result"])
    except (ValueError, KeyError, TypeError):
        return None


def run_bittorrent(fleet: Fleet) -> ScenarioResult:
    result = new_result(fleet, "bittorrent")
    result.client = "aria2c"  # not a container client: --client does not apply
    work = fleet.scenario_dir("bittorrent")
    plan = fleet.plan
    seed_root = work / "seed"
    content = seed_root / NAME
    content.mkdir(parents=True)
    for blob in fleet.blobs:
        os.link(fleet.origin.blob_file(blob.digest), content / blob.digest.split(":", 1)[1])
    torrent = work / f"{NAME}.torrent"
    tracker_url = f"http://{plan.svc.ip}:{TRACKER_PORT}/announce"
    made = netns_run(
        plan.origin.netns,
        [
            "mktorrent",
            "-d",
            "-a",
            tracker_url,
            "-l",
            str(_piece_exponent(fleet.image_bytes)),
            "-n",
            NAME,
            "-o",
            str(torrent),
            str(content),
        ],
    )
    if made.returncode != 0:
        result.error = f"mktorrent failed: {made.stderr.strip()[-500:]}"
        return result
    chroot = work / "tracker"
    chroot.mkdir()
    (chroot / "whitelist").write_text(info_hash(torrent.read_bytes()) + "\n")
    os.chmod(chroot, 0o755)
    started: list[Proc] = []
    try:
        started.append(
            fleet.procs.spawn(
                plan.svc.netns,
                [
                    "opentracker",
                    "-i",
                    plan.svc.ip,
                    "-p",
                    str(TRACKER_PORT),
                    "-P",
                    str(TRACKER_PORT),
                    "-d",
                    str(chroot),
                    "-w",
                    "whitelist",
                ],
                log=work / "tracker.log",
            )
        )
        started.append(
            fleet.procs.spawn(
                plan.origin.netns,
                [
                    *_aria2_common(seed_root),
                    "--bt-seed-unverified=true",
                    "--enable-rpc=true",
                    f"--rpc-listen-port={RPC_PORT}",
                    "--rpc-listen-all=false",
                    str(torrent),
                ],
                log=work / "seeder.log",
            )
        )
        time.sleep(2.0)  # tracker up, seeder announced: leechers learn of it on first announce
        rollout = Rollout(fleet, result)
        upload0 = _seeder_upload(fleet) or 0
        clients: dict[str, Proc] = {}
        done: dict[str, Path] = {}
        logs: dict[str, Path] = {}
        t0 = rollout.start()
        for host in plan.nodes:
            node_dir = work / host.role
            node_dir.mkdir()
            done[host.role] = node_dir / ".done"
            hook = work / f"hook-{host.role}.sh"
            hook.write_text(f"#!/bin/sh\n: > {done[host.role]}\n")
            hook.chmod(0o755)
            logs[host.role] = work / f"{host.role}.log"
            clients[host.role] = fleet.procs.spawn(
                host.netns,
                [*_aria2_common(node_dir), f"--on-bt-download-complete={hook}", str(torrent)],
                log=logs[host.role],
            )
        started += clients.values()
        finished = wait_for_nodes(clients, t0, fleet.timeout, done_files=done)
        rollout.finish()
        # leechers start with the clock: all their CPU is the rollout's
        result.data_plane = CpuMeter("aria2 leechers").finish({n: p.pid for n, p in clients.items()})
        upload = _seeder_upload(fleet)
        result.origin_egress_bytes = None if upload is None else upload - upload0
    finally:
        fleet.procs.stop(started)
    files = {
        h.role: {b.digest: work / h.role / NAME / b.digest.split(":", 1)[1] for b in fleet.blobs} for h in plan.nodes
    }
    collect(fleet, result, finished, files, logs=logs)
    result.notes.append("origin egress = the seeder's payload upload (aria2 RPC uploadLength)")
    return result
