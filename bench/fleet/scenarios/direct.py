"""Scenario 1, direct: every node pulls the image from the origin registry (skopeo or ctr)."""

from __future__ import annotations

from pathlib import Path

from bench.fleet.procs import Proc
from bench.fleet.scenarios.base import (
    Fleet,
    Rollout,
    ScenarioResult,
    collect,
    new_result,
    wait_for_nodes,
)
from bench.fleet.scenarios.clients import make_client

__all__ = ["run_direct"]


def run_direct(fleet: Fleet) -> ScenarioResult:
    result = new_result(fleet, "direct")
    work = fleet.scenario_dir("direct")
    client = make_client(fleet, work)
    clients: dict[str, Proc] = {}
    logs: dict[str, Path] = {}
    checks: dict[str, str | None] = {}
    try:
        logs = {h.role: work / f"{h.role}.log" for h in fleet.plan.nodes}
        problem = client.start() or client.prestart(None, logs)
        if problem:
            result.error = f"{client.name}: {problem}"
            return result
        offset = fleet.origin.mark()
        rollout = Rollout(fleet, result)
        t0 = rollout.start()
        clients.update(client.start_pulls(None, logs))
        finished = wait_for_nodes(clients, t0, fleet.timeout)
        rollout.finish()
        fleet.procs.stop(list(clients.values()))
        result.origin_egress_bytes = fleet.origin.egress_since(offset)
        checks = {h.role: client.check(h) for h in fleet.plan.nodes if finished[h.role][0] is not None}
        result.notes += client.notes(logs)
    finally:
        fleet.procs.stop(list(clients.values()))
        client.stop()
    files = {h.role: client.files(h) for h in fleet.plan.nodes}
    collect(fleet, result, finished, files, logs=logs, extra=checks)
    return result
