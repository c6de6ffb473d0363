"""``python -m bench.simulate``: one simulated rollout, a table, and ``--json``'s last line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from bench.fleet.shaping import parse_rate
from bench.simulate.fleet import FleetSpec, build_fleet
from bench.simulate.result import RolloutResult
from bench.simulate.rollout import POLICIES, run_rollout
from shoal.core.units import parse_size
from shoal.p2p import pieces
from shoal.p2p.download_state import DownloadRules
from shoal.scheduler.config import SchedulerConfig


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.simulate", description=__doc__)
    p.add_argument("--nodes", type=int, default=100, help="nodes pulling the image (default 100)")
    p.add_argument("--size", default="1G", help="image size, e.g. 96M, 1G (default 1G)")
    p.add_argument("--layers", type=int, default=8, help="layers of equal size (default 8)")
    p.add_argument("--bandwidth", default="1gbit", help="each node's upload and download cap (default 1gbit)")
    p.add_argument("--origin-bandwidth", default=None, help="the origin's upload cap (default: --bandwidth)")
    p.add_argument("--slow-fraction", type=float, default=0.0, help="share of nodes at bandwidth/slow-factor")
    p.add_argument("--slow-factor", type=float, default=10.0, help="how much slower the slow nodes are (default 10)")
    p.add_argument("--churn", type=float, default=0.0, help="share of nodes that die at random times mid-rollout")
    p.add_argument("--zones", type=int, default=1, help="zones the nodes are spread over (default 1)")
    p.add_argument("--cross-zone-bandwidth", default=None, help="cap per ordered pair of zones (default: none)")
    p.add_argument("--latency", type=float, default=0.0005, help="one-way seconds within a zone (default 0.0005)")
    p.add_argument("--cross-zone-latency", type=float, default=0.002, help="one-way seconds across zones")
    p.add_argument("--scheduler-replicas", type=int, default=1, help="scheduler replicas (default 1)")
    p.add_argument(
        "--scheduler-death",
        type=float,
        default=None,
        metavar="FRACTION",
        help="the first replica dies after this share of the bound (e.g. 0.3); default: none dies",
    )
    p.add_argument(
        "--target-pieces",
        type=int,
        default=None,
        help="try another piece size rule: pieces per blob aimed at (shoal.p2p.pieces.TARGET_PIECES)",
    )
    p.add_argument("--policy", choices=sorted(POLICIES), default="shoal")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rate-interval", type=float, default=0.005, help="least seconds between max-min recomputations")
    p.add_argument(
        "--time-limit", type=float, default=None, help="virtual seconds to give up after (default 20x bound)"
    )
    p.add_argument(
        "--rule",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a DownloadRules field for every download (e.g. max_requests=24); repeatable",
    )
    p.add_argument(
        "--scheduler-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a SchedulerConfig field (e.g. max_children=4); repeatable",
    )
    p.add_argument(
        "--upload-slots",
        type=int,
        default=None,
        help="links a node sends on at once, one piece per turn (default: every link with a request)",
    )
    p.add_argument(
        "--start-spread",
        type=float,
        default=None,
        metavar="SECONDS",
        help="Shoal's pulls start at uniform times over this many seconds (default 0.2; the lab's: 0.5-0.7)",
    )
    p.add_argument(
        "--probe",
        type=float,
        default=None,
        metavar="SECONDS",
        help="print the network's state (uploads busy, flows per node) to stderr every SECONDS of virtual time",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    return p


def spec_from(args: argparse.Namespace) -> FleetSpec:
    bandwidth = parse_rate(args.bandwidth) / 8
    origin = parse_rate(args.origin_bandwidth) / 8 if args.origin_bandwidth else bandwidth
    cross = parse_rate(args.cross_zone_bandwidth) / 8 if args.cross_zone_bandwidth else None
    return FleetSpec(
        nodes=args.nodes,
        size=parse_size(args.size),
        layers=args.layers,
        bandwidth=bandwidth,
        origin_bandwidth=origin,
        slow_fraction=args.slow_fraction,
        slow_factor=args.slow_factor,
        churn=args.churn,
        zones=args.zones,
        cross_zone_bandwidth=cross,
        latency=args.latency,
        cross_zone_latency=args.cross_zone_latency,
        seed=args.seed,
    )


def overrides(cls: type[Any], pairs: list[str], flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as fields of the dataclass ``cls``, each converted to its default's type."""
    known = {f.name: f for f in fields(cls)}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        field = known.get(key)
        if not sep or field is None:
            raise ValueError(f"{flag} {pair}: want KEY=VALUE with KEY one of {', '.join(sorted(known))}")
        kind: Any = type(field.default)
        out[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return out


def render(result: RolloutResult) -> str:
    r = result
    lines = [
        f"{r.policy}: {r.nodes} nodes, image {r.image_bytes / 2**20:.0f} MiB",
        f"  slowest survivor {r.slowest_s:.2f} s, p50 {r.p50_s:.2f} s, p90 {r.p90_s:.2f} s",
        f"  bound {r.bound_s:.2f} s ({r.bound_term}): {r.ratio_to_bound:.2f}x",
        f"  origin egress {r.origin_egress_ratio:.3f}x the image; cross-zone {r.cross_zone_copies:.2f} copies",
        f"  finished {r.finished}/{r.survivors} survivors ({r.dead} died)",
        f"  scheduler CPU {r.scheduler_cpu_s:.2f} s in {r.scheduler_calls} calls"
        f" = {100 * r.scheduler_cpu_share:.1f}% of one core over the rollout",
        f"  simulated in {r.wall_s:.0f} s wall ({r.events} steps, {r.rate_recomputations} rate recomputations)",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        spec = spec_from(args)
        if args.scheduler_replicas < 1:
            raise ValueError("want --scheduler-replicas >= 1")
        if args.probe is not None and args.probe <= 0:
            raise ValueError("want --probe > 0")
        if args.scheduler_death is not None and args.scheduler_replicas < 2:
            raise ValueError("--scheduler-death needs --scheduler-replicas >= 2 (one must survive)")
        rules = DownloadRules(**overrides(DownloadRules, args.rule, "--rule"))
        config = SchedulerConfig(
            insecure_no_peer_auth=True, **overrides(SchedulerConfig, args.scheduler_option, "--scheduler-option")
        )
    except ValueError as exc:
        print(f"bench.simulate: {exc}", file=sys.stderr)
        return 2
    if args.target_pieces is not None:
        # the agents' and the scheduler's one rule, changed for this process
        pieces.TARGET_PIECES = args.target_pieces
    started = time.monotonic()
    result = run_rollout(
        build_fleet(spec),
        policy=args.policy,
        replicas=args.scheduler_replicas,
        scheduler_death=args.scheduler_death,
        rate_interval=args.rate_interval,
        time_limit=args.time_limit,
        started=started,
        rules=rules,
        config=config,
        upload_slots=args.upload_slots,
        start_spread=args.start_spread,
        probe=args.probe,
    )
    print(render(result))
    if args.json:
        print(json.dumps(result.to_json()))
    return 0 if result.finished == result.survivors else 1
