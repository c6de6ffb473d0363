"""One fleet run: build the lab, start the origin, push the image, run each scenario."""

from __future__ import annotations

import shutil
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from bench.fleet.netns import Lab, deferred_signals, plan_lab
from bench.fleet.origin import Origin
from bench.fleet.procs import ProcessSet
from bench.fleet.scenarios import SCENARIOS, Fleet, ScenarioResult
from bench.fleet.scenarios.base import new_result
from bench.fleet.shaping import apply_shaping
from shoal.demo.imagegen import GeneratedImage, generate_image

__all__ = ["RunConfig", "check_results", "estimate_seconds", "make_image", "run_fleet"]

TCP_GOODPUT = 0.87
"""Share of an HTB cap one TCP flow gets on this lab (``--selftest``: ~174 of 200 Mbit/s)."""


@dataclass(frozen=True, slots=True)
class RunConfig:
    nodes: int
    size: int
    layers: int
    node_bps: int
    origin_bps: int
    scenarios: tuple[str, ...]
    heterogeneous: bool = False
    kill_fraction: float = 0.0
    kill_after: float | None = None
    timeout: float = 3600.0
    seed: int = 0
    workdir: Path = Path("/var/tmp/shoal-fleet")
    keep: bool = False
    client: str = "skopeo"
    """Client on the nodes (direct, source, p2p): ``skopeo``, ``ctr`` or ``light``."""
    agent_args: tuple[str, ...] = ()
    """More flags for every Shoal agent (swarm settings tried in the lab)."""
    capture: Path | None = None
    """Capture each Shoal scenario's rollout on the node network into this directory."""
    origin_user: tuple[str, str] | None = None
    """(user, password): a private image, the registry asks for them (light client only)."""

    def at(self, nodes: int, node_bps: int, origin_bps: int) -> RunConfig:
        return replace(self, nodes=nodes, node_bps=node_bps, origin_bps=origin_bps)


def make_image(cfg: RunConfig) -> GeneratedImage:
    return generate_image(cfg.workdir / "image", size=cfg.size, layers=cfg.layers, seed=cfg.seed)


def estimate_seconds(cfg: RunConfig, scenario: str) -> float:
    """Rough wall time of one scenario, for the up-front warning (not a measurement)."""
    bits = cfg.size * 8.0
    if scenario in ("direct", "source"):
        return cfg.nodes * bits / (cfg.origin_bps * TCP_GOODPUT) + 10
    return 3 * bits / (min(cfg.node_bps, cfg.origin_bps) * TCP_GOODPUT) + 20


def run_fleet(
    cfg: RunConfig,
    image: GeneratedImage,
    progress: Callable[[str], None] = print,
) -> list[ScenarioResult]:
    """Run ``cfg.scenarios`` one after another on one lab of ``cfg.nodes`` nodes."""
    plan = plan_lab(
        cfg.nodes,
        node_bps=cfg.node_bps,
        origin_bps=cfg.origin_bps,
        heterogeneous=cfg.heterogeneous,
    )
    work = cfg.workdir / f"lab-{plan.run_id}"
    procs = ProcessSet()
    results: list[ScenarioResult] = []
    started = time.monotonic()
    with Lab(plan):
        try:
            apply_shaping(plan)
            progress(f"lab {plan.run_id}: {cfg.nodes} nodes shaped in {time.monotonic() - started:.1f} s")
            users = dict([cfg.origin_user]) if cfg.origin_user else {}
            origin = Origin(plan.origin, work / "origin", procs, users=users)
            origin.start()
            origin.push(image.layout_ref, image.tag)
            fleet = Fleet(
                plan=plan,
                procs=procs,
                origin=origin,
                tag=image.tag,
                blobs=list(image.blobs),
                workdir=work,
                timeout=cfg.timeout,
                kill_fraction=cfg.kill_fraction,
                kill_after=cfg.kill_after,
                seed=cfg.seed,
                client=cfg.client,
                agent_args=cfg.agent_args,
                capture=cfg.capture,
            )
            for name in cfg.scenarios:
                progress(f"N={cfg.nodes} {name}: running (estimate {estimate_seconds(cfg, name):.0f} s)")
                try:
                    result = SCENARIOS[name](fleet)
                except Exception as exc:  # one broken scenario must not hide the others
                    result = new_result(fleet, name)
                    result.error = f"{type(exc).__name__}: {exc}"
                    progress(traceback.format_exc())
                results.append(result)
                slowest = result.slowest
                progress(
                    f"N={cfg.nodes} {name}: "
                    + (
                        f"slowest {slowest:.1f} s, {result.ratio:.2f}x bound"
                        if slowest is not None and result.ratio is not None
                        else f"FAILED ({result.error or f'{len(result.failures)} nodes failed'})"
                    )
                )
                if not cfg.keep:
                    shutil.rmtree(work / name, ignore_errors=True)
        finally:
            with deferred_signals():
                procs.stop_all()
                if not cfg.keep:
                    shutil.rmtree(work, ignore_errors=True)
    return results


def check_results(results: Sequence[ScenarioResult], *, kills: bool) -> list[str]:
    """Correctness and origin-egress checks (never time): what is wrong, empty if nothing."""
    problems: list[str] = []
    for r in results:
        where = f"N={r.nodes} {r.scenario}"
        if r.error:
            problems.append(f"{where}: {r.error}")
            continue
        for o in r.failures:
            problems.append(f"{where}: {o.node}: {o.error}")
        egress = r.origin_egress_bytes
        f = r.image_bytes
        if egress is None:
            problems.append(f"{where}: origin egress not measured")
        elif r.scenario in ("direct", "source") and not kills and egress != r.nodes * f:
            problems.append(f"{where}: origin egress {egress} B, want N x image = {r.nodes * f} B")
        elif r.scenario in ("p2p", "p2p-tls") and not kills and egress != f:
            problems.append(f"{where}: origin egress {egress} B = {egress / f:.3f}x image, want 1.00x")
        elif r.scenario == "bittorrent" and egress < f:
            problems.append(f"{where}: seeder uploaded {egress} B, less than one copy ({f} B)")
    return problems
