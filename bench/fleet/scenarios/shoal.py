"""Scenarios 2 and 3: a Shoal agent on every node, as a per-node mirror or with P2P.

Each node runs ``shoal agent`` on 0.0.0.0:65001 in its namespace (its own 127.0.0.1 for
the client, its node address for peers); the scheduler runs in the svc namespace. The
client is skopeo through the agent, path form:
``docker://127.0.0.1:65001/<upstream-name>/bench/app:TAG``, where ``<upstream-name>`` is a
host name (a ``host:port`` is not a valid path component of an image reference) that each
agent maps to the origin with ``--registry <name>=http://<origin-ip>:5000``.
With ``--client ctr`` each node's containerd uses the agent as the origin's mirror
(``hosts.toml``) and asks for ``...?ns=<origin-ip>:5000``, so the agents also get
``--registry <origin-ip>:5000=http://<origin-ip>:5000`` (see ``clients.py``).

``source`` (``--download-pattern source``): every agent fetches from the origin itself.
``p2p``: agents share pieces through the scheduler, the peer wire in clear
(``--insecure-peer-wire``); ``p2p-tls``: the same with TLS 1.3, each node with a certificate
for its address from a throwaway CA (what encryption costs: compare the two).
With ``Fleet.kill_fraction`` > 0, that share of agents is SIGKILLed (by PID) at
``kill_after`` seconds (default: 30% of the lower bound); the rest must still finish.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import signal
import sys
import time
from pathlib import Path

from bench.fleet.cpu import CpuMeter
from bench.fleet.netns import Host
from bench.fleet.origin import blob_bytes_served, netns_run
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
from shoal.scheduler.ca import write_new_ca
from shoal.testing.capture import Tcpdump

__all__ = ["run_p2p", "run_p2p_tls", "run_source"]

AGENT_PORT = 65001
SCHEDULER_PORT = 8002
_HEALTH_TIMEOUT = 60.0


def _shoal() -> str:
    return str(Path(sys.executable).with_name("shoal"))


def _healthy(host: Host, port: int, ip: str = "127.0.0.1", scheme: str = "http") -> bool:
    # -k: only whether it answers is the question here; agents verify the scheduler themselves
    argv = ["curl", "-sfk", "-o", "/dev/null", f"{scheme}://{ip}:{port}/healthz"]
    return netns_run(host.netns, argv, timeout=5).returncode == 0


def _wait_healthy(hosts: list[tuple[Host, int]], procs: dict[str, Proc], scheme: str = "http") -> str | None:
    deadline = time.monotonic() + _HEALTH_TIMEOUT
    pending = list(hosts)
    while pending and time.monotonic() < deadline:
        for host, port in list(pending):
            proc = procs[host.role]
            if proc.poll() is not None:
                return f"{host.role}: shoal exited with {proc.returncode}"
            if _healthy(host, port, scheme=scheme):
                pending.remove((host, port))
        time.sleep(0.2)
    if pending:
        return f"not healthy after {_HEALTH_TIMEOUT:.0f} s: {', '.join(h.role for h, _ in pending)}"
    return None


def _node_network_capture(fleet: Fleet, name: str) -> contextlib.AbstractContextManager[object]:
    """``tcpdump`` on the lab's bridge while the rollout runs, when asked (``Fleet.capture``):
    every frame between nodes and to the scheduler; the origin's link is left out (in the
    lab it is plain HTTP, the registry's own transport, not Shoal's)."""
    if fleet.capture is None:
        return contextlib.nullcontext()
    fleet.capture.mkdir(parents=True, exist_ok=True)
    return Tcpdump(fleet.plan.bridge, f"not host {fleet.plan.origin.ip}", fleet.capture / f"{name}.pcap")


def _run_shoal(fleet: Fleet, name: str, pattern: str, *, tls: bool = False) -> ScenarioResult:
    result = new_result(fleet, name)
    work = fleet.scenario_dir(name)
    plan = fleet.plan
    token = work / "peer-token"
    token.write_text(secrets.token_hex(16) + "\n")
    token.chmod(0o600)
    # the scheduler over TLS with its own CA, agents enrolled for node certificates (as the chart)
    ca_dir = write_new_ca(work / "ca").parent
    scheduler_url = f"https://{plan.svc.ip}:{SCHEDULER_PORT}"
    daemons: dict[str, Proc] = {}
    clients: dict[str, Proc] = {}
    killed: frozenset[str] = frozenset()
    client = make_client(fleet, work)
    checks: dict[str, str | None] = {}
    try:
        if pattern == "p2p":
            daemons[plan.svc.role] = fleet.procs.spawn(
                plan.svc.netns,
                [
                    _shoal(),
                    "scheduler",
                    "--listen",
                    f"0.0.0.0:{SCHEDULER_PORT}",
                    "--peer-token-file",
                    str(token),
                    "--tls-ca-dir",
                    str(ca_dir),
                    "--tls-ip",
                    plan.svc.ip,
                ],
                log=work / "scheduler.log",
            )
            problem = _wait_healthy([(plan.svc, SCHEDULER_PORT)], daemons, scheme="https")
            if problem:
                result.error = f"scheduler: {problem}"
                return result
        p2p_args: list[str] = []
        if pattern == "p2p":
            p2p_args = ["--scheduler", scheduler_url, "--peer-token-file", str(token)]
            p2p_args += ["--scheduler-ca", str(ca_dir / "tls.crt")]
        upstream = f"http://{fleet.origin.address}"
        registry_args = ["--registry", f"{fleet.upstream_name}={upstream}"]
        for name in client.agent_registry_names():
            registry_args += ["--registry", f"{name}={upstream}"]
        for host in plan.nodes:
            # the peer wire runs TLS with the enrolled certificate unless this scenario compares it in clear
            wire_args = ["--insecure-peer-wire"] if pattern == "p2p" and not tls else []
            daemons[host.role] = fleet.procs.spawn(
                host.netns,
                [
                    _shoal(),
                    "agent",
                    "--listen",
                    f"0.0.0.0:{AGENT_PORT}",
                    "--advertise",
                    f"{host.ip}:{AGENT_PORT}",
                    *registry_args,
                    "--cache-dir",
                    str(work / host.role / "cache"),
                    "--download-pattern",
                    pattern,
                    *p2p_args,
                    *(["--tls-dir", str(work / host.role / "tls")] if pattern == "p2p" else []),
                    *wire_args,
                    *fleet.agent_args,
                ],
                log=work / host.role / "agent.log",
            )
        problem = _wait_healthy([(h, AGENT_PORT) for h in plan.nodes], daemons)
        if problem:
            result.error = f"agents: {problem}"
            return result
        problem = client.start()
        if problem:
            result.error = f"{client.name}: {problem}"
            return result

        victims: list[str] = []
        if fleet.kill_fraction > 0:
            count = max(1, round(len(plan.nodes) * fleet.kill_fraction))
            rng = random.Random(fleet.seed)
            victims = sorted(rng.sample([h.role for h in plan.nodes], count))
            killed = frozenset(victims)
        kill_at = fleet.kill_after
        if kill_at is None:
            kill_at = 0.3 * result.bound.seconds

        def kill_victims() -> None:
            for role in victims:
                fleet.procs.signal(daemons[role], signal.SIGKILL)

        ticks: list[tuple[float, object]] = [(kill_at, kill_victims)] if victims else []
        mirror = f"127.0.0.1:{AGENT_PORT}"
        logs: dict[str, Path] = {h.role: work / h.role / "client.log" for h in plan.nodes}
        problem = client.prestart(mirror, logs)
        if problem:
            result.error = f"{client.name}: {problem}"
            return result
        offset = fleet.origin.mark()
        rollout = Rollout(fleet, result)
        agents = {h.role: daemons[h.role].pid for h in plan.nodes}
        meter = CpuMeter("agents")
        control = CpuMeter("scheduler")
        control_pids = {plan.svc.role: daemons[plan.svc.role].pid} if plan.svc.role in daemons else {}
        meter.start(agents)
        control.start(control_pids)
        with _node_network_capture(fleet, name) as capture:
            t0 = rollout.start()
            clients.update(client.start_pulls(mirror, logs))
            finished = wait_for_nodes(clients, t0, fleet.timeout, on_tick=ticks)
            rollout.finish()
        if isinstance(capture, Tcpdump):
            result.notes.append(f"node network captured: {capture.dropped} packets dropped")
        result.data_plane = meter.finish(agents)
        if control_pids:
            result.notes.append(f"scheduler CPU during the rollout: {control.finish(control_pids).seconds:.2f} s")
        lines = fleet.origin.lines_since(offset)
        result.origin_egress_bytes = blob_bytes_served(lines)
        bypass = client.bypassed_mirror(lines)
        if bypass:
            result.error = f"{client.name} bypassed the agent: {bypass}"
        if victims:
            result.notes.append(
                f"killed {len(victims)} agents at {kill_at:.1f} s: {', '.join(victims)}; "
                "times are for the remaining nodes"
            )
        result.notes += client.notes(logs)
        checks = {
            h.role: client.check(h) for h in plan.nodes if h.role not in killed and finished[h.role][0] is not None
        }
    finally:
        fleet.procs.stop([*clients.values(), *daemons.values()])
        client.stop()
    files = {h.role: client.files(h) for h in plan.nodes}
    collect(fleet, result, finished, files, killed=killed, logs=logs, extra=checks)
    return result


def run_source(fleet: Fleet) -> ScenarioResult:
    """Scenario 2: a mirror per node without P2P (``--download-pattern source``)."""
    return _run_shoal(fleet, "source", "source")


def run_p2p(fleet: Fleet) -> ScenarioResult:
    """Scenario 3: Shoal P2P, the peer wire in clear."""
    return _run_shoal(fleet, "p2p", "p2p")


def run_p2p_tls(fleet: Fleet) -> ScenarioResult:
    """Scenario 3 with the peer wire in TLS 1.3 and node certificates."""
    return _run_shoal(fleet, "p2p-tls", "p2p", tls=True)
