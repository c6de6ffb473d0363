"""Scenario 1, direct: every node pulls the image from the origin registry with skopeo."""

from __future__ import annotations

from bench.fleet.scenarios.base import (
    Fleet,
    Rollout,
    ScenarioResult,
    collect,
    layout_files,
    new_result,
    skopeo_pull_argv,
    wait_for_nodes,
)

__all__ = ["run_direct"]


def run_direct(fleet: Fleet) -> ScenarioResult:
    result = new_result(fleet, "direct")
    work = fleet.scenario_dir("direct")
    offset = fleet.origin.mark()
    rollout = Rollout(fleet, result)
    clients = {}
    logs = {}
    t0 = rollout.start()
    for host in fleet.plan.nodes:
        logs[host.role] = work / f"{host.role}.log"
        clients[host.role] = fleet.procs.spawn(
            host.netns,
            skopeo_pull_argv(fleet.origin_ref, work / host.role, fleet.tag),
            log=logs[host.role],
        )
    finished = wait_for_nodes(clients, t0, fleet.timeout)
    rollout.finish()
    fleet.procs.stop(list(clients.values()))
    result.origin_egress_bytes = fleet.origin.egress_since(offset)
    files = {h.role: layout_files(work / h.role, fleet.blobs) for h in fleet.plan.nodes}
    collect(fleet, result, finished, files, logs=logs)
    return result
