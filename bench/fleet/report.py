"""Print a table (rich), write JSON, draw a PNG (matplotlib, Agg)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.fleet.scenarios.base import ScenarioResult
from bench.fleet.shaping import format_rate
from shoal.core.units import format_bytes

__all__ = ["draw_png", "print_table", "to_json", "write_json"]


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _cpu(r: ScenarioResult) -> str:
    per_mib = r.cpu_ms_per_mib
    if r.data_plane is None or per_mib is None:
        return "-"
    rss = f", peak RSS {r.data_plane.peak_rss_mib:.0f} MiB" if r.data_plane.peak_rss_mib else ""
    return f"{per_mib:.1f} ms/MiB ({r.data_plane.kind}{rss})"


def print_table(results: Sequence[ScenarioResult], console: Console | None = None) -> None:
    console = console or Console(width=None if sys.stdout.isatty() else 180)
    table = Table(title="Fleet rollout (times in seconds from the start of the rollout)")
    for col in (
        "N",
        "scenario",
        "client",
        "caps node/origin",
        "slowest",
        "p50",
        "p90",
        "lower bound",
        "x bound",
        "origin egress",
        "x image",
        "CPU busy",
        "data-plane CPU",
        "failed",
    ):
        table.add_column(col, justify="left" if col in ("scenario", "client") else "right")
    for r in results:
        ratio = r.ratio
        egress = r.egress_ratio
        table.add_row(
            str(r.nodes),
            r.scenario + (" (het.)" if r.heterogeneous else ""),
            r.client,
            f"{format_rate(r.node_bps)}/{format_rate(r.origin_bps)}",
            _s(r.slowest),
            _s(r.percentile(0.5)),
            _s(r.percentile(0.9)),
            f"{r.bound.seconds:.1f} ({r.bound.binding})",
            "-" if ratio is None else f"{ratio:.2f}",
            "-" if r.origin_egress_bytes is None else format_bytes(r.origin_egress_bytes),
            "-" if egress is None else f"{egress:.2f}",
            f"{r.cpu_busy:.0%}",
            _cpu(r),
            r.error[:60] if r.error else str(len(r.failures)),
        )
    console.print(table)
    for r in results:
        for note in r.notes:
            console.print(f"N={r.nodes} {r.scenario}: {note}")
    if any(r.cpu_busy > 0.9 for r in results):
        console.print(
            "[yellow]CPU was above 90% busy in some scenarios: there the two cores, "
            "not the emulated links, limited the rollout.[/yellow]"
        )


def result_dict(r: ScenarioResult) -> dict[str, Any]:
    return {
        "scenario": r.scenario,
        "nodes": r.nodes,
        "client": r.client,
        "image_bytes": r.image_bytes,
        "node_bps": r.node_bps,
        "origin_bps": r.origin_bps,
        "heterogeneous": r.heterogeneous,
        "lower_bound_s": r.bound.seconds,
        "lower_bound_binding": r.bound.binding,
        "lower_bound_terms_s": {
            "origin": r.bound.origin_term,
            "download": r.bound.download_term,
            "upload": r.bound.upload_term,
        },
        "slowest_s": r.slowest,
        "p50_s": r.percentile(0.5),
        "p90_s": r.percentile(0.9),
        "ratio_to_bound": r.ratio,
        "origin_egress_bytes": r.origin_egress_bytes,
        "origin_egress_x_image": r.egress_ratio,
        "origin_wire_bytes": r.origin_wire_bytes,
        "cpu_busy": r.cpu_busy,
        "data_plane_cpu": None
        if r.data_plane is None
        else {
            "kind": r.data_plane.kind,
            "processes": r.data_plane.processes,
            "rollout_cpu_s": r.data_plane.seconds,
            "startup_cpu_s": r.data_plane.before_s,
            "peak_rss_mib": r.data_plane.peak_rss_mib,
            "ms_per_mib_delivered": r.cpu_ms_per_mib,
        },
        "error": r.error,
        "notes": r.notes,
        "nodes_detail": [
            {"node": o.node, "seconds": o.seconds, "ok": o.ok, "error": o.error, "killed": o.killed} for o in r.outcomes
        ],
    }


def to_json(results: Sequence[ScenarioResult], meta: dict[str, Any]) -> dict[str, Any]:
    return {**meta, "results": [result_dict(r) for r in results]}


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def draw_png(path: Path, results: Sequence[ScenarioResult], cdf_nodes: int, notes: Sequence[str] = ()) -> None:
    """Completion CDF per scenario at ``cdf_nodes``; time vs N if several N were run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r.nodes for r in results})
    panels = 2 if len(sizes) > 1 else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.8), squeeze=False)
    ax = axes[0][0]
    bound = None
    for r in results:
        if r.nodes != cdf_nodes:
            continue
        bound = r.bound.seconds
        times = sorted(o.seconds for o in r.measured if o.ok and o.seconds is not None)
        if not times:
            continue
        fractions = [(i + 1) / len(r.measured) for i in range(len(times))]
        ax.step([0.0, *times], [0.0, *fractions], where="post", label=r.scenario)
    if bound is not None:
        ax.axvline(bound, color="black", linestyle="--", linewidth=1, label="lower bound")
    _lo, hi = ax.get_xlim()
    if bound is not None and hi > 8 * bound:
        # direct pulls take N times longer than the swarm: a log axis keeps both readable
        ax.set_xscale("log")
        ax.set_xlim(max(0.1, bound / 4), hi * 1.1)
    else:
        ax.set_xlim(0, hi * 1.05)
    ax.set_xlabel("seconds since rollout start")
    ax.set_ylabel("share of nodes done")
    ax.set_title(f"Per-node completion, N={cdf_nodes}")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    if panels == 2:
        ax2 = axes[0][1]
        for name in dict.fromkeys(r.scenario for r in results):
            pts = [(r.nodes, r.slowest) for r in results if r.scenario == name]
            xs = [n for n, t in pts if t is not None]
            ys = [t for _, t in pts if t is not None]
            ax2.plot(xs, ys, marker="o", label=name)
        bounds = {r.nodes: r.bound.seconds for r in results}
        ax2.plot(sorted(bounds), [bounds[n] for n in sorted(bounds)], "k--", label="lower bound")
        ax2.set_xlabel("nodes (N)")
        ax2.set_ylabel("slowest node, seconds")
        ax2.set_title("Rollout time vs N")
        ax2.set_xticks(sizes)
        ax2.grid(alpha=0.3)
        ax2.legend()
    if notes:
        fig.text(0.01, 0.01, "\n".join(notes), fontsize=7, va="bottom")
        fig.subplots_adjust(bottom=0.12 + 0.03 * len(notes))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
