"""``python -m bench.fleet``: the fleet benchmark (root; run from the repository root)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from bench.fleet.netns import cleanup_leftovers
from bench.fleet.report import draw_png, print_table, to_json, write_json
from bench.fleet.runner import RunConfig, check_results, estimate_seconds, make_image, run_fleet
from bench.fleet.scenarios import SCENARIOS, ScenarioResult
from bench.fleet.scenarios.clients import CLIENTS
from bench.fleet.selftest import print_selftest, run_selftest
from bench.fleet.shaping import format_rate, parse_rate
from shoal.core.units import format_bytes, parse_size

RESULTS = Path(__file__).resolve().parent.parent / "results"
SMALL_NODES = 6
SMALL_SIZE = 64 << 20


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.fleet",
        description="Roll one image out to N network-namespace nodes on tc-shaped links: "
        "direct pulls, a Shoal mirror per node (source), Shoal P2P and BitTorrent, "
        "each as a ratio to the Kumar-Ross lower bound.",
    )
    p.add_argument("--nodes", type=int, default=20, help="fleet size N (default 20)")
    p.add_argument("--size", default="512M", help="image layer bytes (default 512M)")
    p.add_argument("--layers", type=int, default=4, help="number of layers (default 4)")
    p.add_argument("--bandwidth", default="200mbit", help="each node's upload and download cap (default 200mbit)")
    p.add_argument("--origin-bandwidth", default=None, help="the origin's cap (default: the node cap)")
    p.add_argument(
        "--scenarios", default="direct,source,p2p,bittorrent", help=f"comma-separated, from {','.join(SCENARIOS)}"
    )
    p.add_argument(
        "--client",
        choices=CLIENTS,
        default="skopeo",
        help="client on every node (direct, source, p2p): skopeo into an OCI "
        "layout, ctr image pull through a containerd per node with hosts.toml, or light: "
        "the manifest then every blob in parallel into files, like curl (default skopeo)",
    )
    p.add_argument("--heterogeneous", action="store_true", help="a quarter of the nodes at a quarter of the bandwidth")
    p.add_argument(
        "--kill-fraction", type=float, default=0.0, help="SIGKILL this share of Shoal agents mid-rollout (e.g. 0.2)"
    )
    p.add_argument(
        "--kill-after",
        type=float,
        default=None,
        help="seconds into the rollout to kill agents (default 30%% of the bound)",
    )
    p.add_argument("--sweep", default=None, help="run at each N of this list, e.g. 5,10,20,40 (time vs N plot)")
    p.add_argument(
        "--aggregate-budget",
        default="4gbit",
        help="in a sweep, lower caps so that N x cap stays within this (2 cores cannot move more; default 4gbit)",
    )
    p.add_argument(
        "--small",
        action="store_true",
        help=f"CI variant: N={SMALL_NODES}, {SMALL_SIZE >> 20} MiB; checks origin "
        "egress and per-node digests, exits non-zero on any wrong result",
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="per scenario, seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--agent-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="one more flag for every Shoal agent, in the = form: --agent-arg=--max-parents=8 (repeatable; "
        "recorded in the JSON): swarm settings tried in the lab",
    )
    p.add_argument("--json", type=Path, default=None, help="JSON path (default bench/results/)")
    p.add_argument("--png", type=Path, default=None, help="PNG path (default bench/results/)")
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp/shoal-fleet"))
    p.add_argument("--keep", action="store_true", help="keep pulled files and logs")
    p.add_argument("--selftest", action="store_true", help="only measure that caps hold and are shared fairly")
    p.add_argument("--cleanup", action="store_true", help="only remove leftovers of runs whose process is gone")
    p.add_argument("--force", action="store_true", help="with --cleanup: every run's leftovers")
    return p


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces, tc)", file=sys.stderr)
        return 2
    # Ctrl-C raises KeyboardInterrupt even if we were started with SIGINT ignored (``cmd &``).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_exit)  # unwinds through every finally: teardown runs
    if args.cleanup:
        removed = cleanup_leftovers(force=args.force)
        print("removed: " + (", ".join(removed) if removed else "nothing"))
        return 0
    node_bps = parse_rate(args.bandwidth)
    if args.selftest:
        return 0 if print_selftest(run_selftest(node_bps)) else 1

    scenarios = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown or not scenarios:
        print(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    nodes, size = args.nodes, parse_size(args.size)
    if args.small:
        nodes, size = SMALL_NODES, SMALL_SIZE
    origin_bps = parse_rate(args.origin_bandwidth) if args.origin_bandwidth else node_bps
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    cfg = RunConfig(
        nodes=nodes,
        size=size,
        layers=args.layers,
        node_bps=node_bps,
        origin_bps=origin_bps,
        scenarios=scenarios,
        heterogeneous=args.heterogeneous,
        kill_fraction=args.kill_fraction,
        kill_after=args.kill_after,
        timeout=args.timeout,
        seed=args.seed,
        workdir=args.workdir / f"run-{stamp}-{os.getpid()}",
        keep=args.keep,
        client=args.client,
        agent_args=tuple(args.agent_arg),
    )
    sizes = [int(x) for x in args.sweep.split(",")] if args.sweep else [nodes]
    budget = parse_rate(args.aggregate_budget)
    notes: list[str] = []
    plans: list[RunConfig] = []
    for n in sizes:
        nb, ob = node_bps, origin_bps
        if args.sweep and n * nb > budget:
            scale = budget / (n * nb)
            nb, ob = int(nb * scale), int(ob * scale)
            notes.append(
                f"N={n}: caps lowered to {format_rate(nb)} node / {format_rate(ob)} "
                f"origin so that N x cap <= {format_rate(budget)} fits 2 cores"
            )
        plans.append(cfg.at(n, nb, ob))
    total = sum(estimate_seconds(p, s) for p in plans for s in scenarios)
    print(
        f"image {format_bytes(size)} in {args.layers} layers; N={sizes}; caps "
        f"{format_rate(node_bps)} node / {format_rate(origin_bps)} origin"
        + ("; heterogeneous" if args.heterogeneous else "")
        + f"; client {args.client}"
    )
    print(
        f"estimated wall time ~{total / 60:.0f} min (direct pulls alone take about "
        f"N x image / origin cap: the issue's defaults are kept, choose --scenarios to shorten)"
    )
    for note in notes:
        print(note)

    results: list[ScenarioResult] = []
    started = time.monotonic()
    try:
        cfg.workdir.mkdir(parents=True, exist_ok=True)
        image = make_image(cfg)
        for plan in plans:
            results += run_fleet(plan, image)
    except KeyboardInterrupt:
        print("interrupted: lab torn down", file=sys.stderr)
        return 130
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(cfg.workdir, ignore_errors=True)

    print_table(results)
    for note in notes:
        print(note)
    problems = check_results(results, kills=args.kill_fraction > 0)
    json_path = args.json or RESULTS / f"fleet-{stamp}.json"
    png_path = args.png or RESULTS / f"fleet-{stamp}.png"
    meta = {
        "command": " ".join(["python -m bench.fleet", *(argv or sys.argv[1:])]),
        "started": stamp,
        "wall_seconds": time.monotonic() - started,
        "image_bytes": results[0].image_bytes if results else None,
        "layers": args.layers,
        "heterogeneous": args.heterogeneous,
        "client": args.client,
        "kill_fraction": args.kill_fraction,
        "agent_args": args.agent_arg,
        "notes": notes,
        "problems": problems,
    }
    write_json(json_path, to_json(results, meta))
    cdf_n = nodes if nodes in sizes else max(sizes)
    draw_png(png_path, results, cdf_n, notes)
    print(f"wrote {json_path} and {png_path}")
    for problem in problems:
        print(f"WRONG: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
