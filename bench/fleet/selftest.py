"""``--selftest``: measure that the caps hold and are shared fairly, before trusting a run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.fleet.netns import Host, Lab, plan_lab
from bench.fleet.procs import ProcessSet
from bench.fleet.shaping import apply_shaping, format_rate

__all__ = ["SelftestResult", "run_selftest"]

_PORT = 5201
_REPO = __file__.rsplit("/bench/", 1)[0]


@dataclass(frozen=True, slots=True)
class SelftestResult:
    name: str
    rates_bps: list[float]
    expected_bps: float

    @property
    def ok(self) -> bool:
        """Each flow within 20% of its fair share of the cap (HTB + TCP overhead ~5%)."""
        return bool(self.rates_bps) and all(
            0.8 * self.expected_bps <= r <= 1.05 * self.expected_bps for r in self.rates_bps
        )


def _flows(procs: ProcessSet, pairs: list[tuple[Host, Host]], seconds: float) -> list[float]:
    """Run one TCP flow per (sender, receiver) pair at once; rates in the pairs' order."""
    receivers = {r.netns: r for _, r in pairs}
    recv_procs = {
        ns: subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                sys.executable,
                "-m",
                "bench.fleet.tcpprobe",
                "recv",
                str(_PORT),
                str(seconds + 1),
            ],
            stdout=subprocess.PIPE,
            cwd=_REPO,
            start_new_session=True,
        )
        for ns in receivers
    }
    time.sleep(0.5)
    senders = [
        procs.spawn(
            s.netns,
            [sys.executable, "-m", "bench.fleet.tcpprobe", "send", r.ip, str(_PORT), str(seconds)],
            cwd=Path(_REPO),
        )
        for s, r in pairs
    ]
    results: dict[str, dict[str, float]] = {}
    for ns, proc in recv_procs.items():
        out, _ = proc.communicate(timeout=seconds + 30)
        results[ns] = json.loads(out or b"{}")
    procs.stop(senders)
    return [results[r.netns].get(s.ip, 0.0) for s, r in pairs]


def run_selftest(node_bps: int, seconds: float = 5.0) -> list[SelftestResult]:
    """Three checks on a 5-node lab: one flow, 4-to-1 (download share), 1-to-4 (upload)."""
    plan = plan_lab(5, node_bps=node_bps, origin_bps=node_bps)
    procs = ProcessSet()
    out: list[SelftestResult] = []
    with Lab(plan):
        try:
            apply_shaping(plan)
            n = plan.nodes
            out.append(SelftestResult("1 flow n0->n1", _flows(procs, [(n[0], n[1])], seconds), node_bps * 0.955))
            fan_in = [(n[i], n[0]) for i in range(1, 5)]
            out.append(
                SelftestResult("4 senders -> n0 (download split)", _flows(procs, fan_in, seconds), node_bps * 0.955 / 4)
            )
            fan_out = [(n[0], n[i]) for i in range(1, 5)]
            out.append(
                SelftestResult(
                    "n0 -> 4 receivers (upload split)", _flows(procs, fan_out, seconds), node_bps * 0.955 / 4
                )
            )
        finally:
            procs.stop_all()
    return out


def print_selftest(results: list[SelftestResult]) -> bool:
    for r in results:
        rates = ", ".join(format_rate(x) for x in r.rates_bps)
        verdict = "ok" if r.ok else "FAIL"
        print(f"{verdict:4}  {r.name}: {rates}  (expected ~{format_rate(r.expected_bps)} each)")
    return all(r.ok for r in results)
