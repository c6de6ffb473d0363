"""Many agents' scheduler calls against one real TLS scheduler, without namespaces.

``python -m bench.fleet.schedload --agents 40 --layers 3 --seconds 30`` starts ``shoal
scheduler`` over TLS 1.3 on loopback with a throwaway CA, gives every simulated agent a node
certificate of its own (127.0.1.K), and runs the agents in ``--workers`` processes (one event
loop each, as a fleet's agents have). Each agent does what a download's owner does for every
layer at once: join, long-poll hashes, report every ``--report-interval`` seconds. It prints
call latencies, failures, and how many TCP+TLS connections the agents opened: a keep-alive
pool opens a few per agent, a pool that does not reuse them opens one per call.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shoal.oci.client import new_session
from shoal.p2p.enrollment import SchedulerTls
from shoal.p2p.protocol import JoinRequest, Report
from shoal.p2p.scheduler_client import SchedulerClient, SchedulerUnavailable
from shoal.scheduler.ca import load_ca, write_new_ca

MiB = 1 << 20


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    created: int = 0
    reused: int = 0
    queued: int = 0

    def note(self, action: str, seconds: float, ok: bool) -> None:
        self.latencies.setdefault(action, []).append(seconds)
        if not ok:
            self.failures[action] = self.failures.get(action, 0) + 1


def _issue(work: Path, agents: int) -> None:
    ca = load_ca(work / "ca")
    for k in range(agents):
        key = ec.generate_private_key(ec.SECP256R1())
        ip = f"127.0.1.{k + 1}"
        issued = ca.issue(
            key.public_key(), f"node{k}", dns_names=(), ips=(ip,), valid_for=datetime.timedelta(hours=1), client=True
        )
        (work / f"node{k}.pem").write_bytes(issued.pem)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        (work / f"node{k}.key").write_bytes(pem)


def _trace(tally: Tally) -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()

    async def created(*_: Any) -> None:
        tally.created += 1

    async def reused(*_: Any) -> None:
        tally.reused += 1

    async def queued(*_: Any) -> None:
        tally.queued += 1

    trace.on_connection_create_end.append(created)
    trace.on_connection_reuseconn.append(reused)
    trace.on_connection_queued_start.append(queued)
    return trace


async def _timed(tally: Tally, action: str, coro: Any) -> Any:
    started = time.monotonic()
    try:
        result = await coro
    except SchedulerUnavailable:
        tally.note(action, time.monotonic() - started, False)
        return None
    tally.note(action, time.monotonic() - started, True)
    return result


async def _agent(k: int, url: str, work: Path, args: argparse.Namespace, tally: Tally) -> None:
    session = new_session()
    session.trace_configs.append(_trace(tally))
    for trace in session.trace_configs:
        trace.freeze()
    tls = SchedulerTls(work / "ca" / "tls.crt", work / f"node{k}.pem", work / f"node{k}.key")
    client = SchedulerClient(session, [url], None, tls=tls)
    peer = f"127.0.1.{k + 1}:65001"
    size, piece = 32 * MiB, MiB
    deadline = time.monotonic() + args.seconds

    async def layer(n: int) -> None:
        digest = f"sha256:{n:064x}"
        join = JoinRequest(peer, peer, size, piece)
        await _timed(tally, "join", client.join(digest, join))

        async def hashes() -> None:
            known = 0
            while time.monotonic() < deadline:
                view = await _timed(tally, "hashes", client.hashes(digest, known, args.status_wait))
                if view is None:
                    await asyncio.sleep(args.report_interval)
                elif view.hashes:
                    known = view.start + len(view.hashes)

        poll = asyncio.create_task(hashes())
        pieces = 0
        while time.monotonic() < deadline:
            await asyncio.sleep(args.report_interval)
            pieces = min(size // piece, pieces + 1)
            report = Report(peer, peer, pieces=pieces, contiguous=pieces * piece, size=size, piece_size=piece)
            await _timed(tally, "report", client.report(digest, report))
        await poll

    try:
        await asyncio.gather(*(layer(n) for n in range(args.layers)))
    finally:
        await session.close()


async def _worker(args: argparse.Namespace) -> dict[str, Any]:
    tally = Tally()
    work = Path(args.work)
    first, last = (int(x) for x in args.worker.split("-"))
    await asyncio.gather(*(_agent(k, args.url, work, args, tally) for k in range(first, last)))
    return {
        "latencies": tally.latencies,
        "failures": tally.failures,
        "created": tally.created,
        "reused": tally.reused,
        "queued": tally.queued,
    }


def _summary(results: list[dict[str, Any]], agents: int) -> dict[str, Any]:
    out: dict[str, Any] = {"agents": agents}
    for key in ("created", "reused", "queued"):
        out[f"connections_{key}"] = sum(r[key] for r in results)
    actions = sorted({a for r in results for a in r["latencies"]})
    for action in actions:
        values = sorted(v for r in results for v in r["latencies"].get(action, []))
        fails = sum(r["failures"].get(action, 0) for r in results)
        out[action] = {
            "calls": len(values),
            "failed": fails,
            "p50_ms": round(1000 * statistics.median(values), 1),
            "p99_ms": round(1000 * values[int(0.99 * (len(values) - 1))], 1),
            "max_ms": round(1000 * values[-1], 1),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet.schedload", description=__doc__)
    parser.add_argument("--agents", type=int, default=40)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--status-wait", type=float, default=5.0)
    parser.add_argument("--report-interval", type=float, default=0.5)
    parser.add_argument("--burners", type=int, default=0, help="busy-loop processes competing for the CPU")
    parser.add_argument("--scheduler-nice", type=int, default=0, help="run the scheduler at this nice value")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(asyncio.run(_worker(args))))
        return 0
    with tempfile.TemporaryDirectory(prefix="schedload-") as tmp:
        work = Path(tmp)
        write_new_ca(work / "ca")
        _issue(work, args.agents)
        (work / "token").write_text("lab-token\n")
        port = 18000 + os.getpid() % 2000
        shoal = str(Path(sys.executable).with_name("shoal"))
        argv_s = [
            shoal,
            "scheduler",
            "--listen",
            f"127.0.0.1:{port}",
            "--peer-token-file",
            str(work / "token"),
            "--tls-ca-dir",
            str(work / "ca"),
            "--tls-ip",
            "127.0.0.1",
        ]
        log = (work / "scheduler.log").open("wb")
        sched = subprocess.Popen(
            ["nice", "-n", str(args.scheduler_nice), *argv_s], stdout=log, stderr=subprocess.STDOUT
        )
        burners: list[subprocess.Popen[bytes]] = []
        try:
            url = f"https://127.0.0.1:{port}"
            for _ in range(300):
                ok = subprocess.run(["curl", "-sfk", "-o", "/dev/null", f"{url}/healthz"], check=False).returncode
                if ok == 0:
                    break
                time.sleep(0.1)
            else:
                raise RuntimeError(f"scheduler not healthy: {(work / 'scheduler.log').read_text()[-2000:]}")
            burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.burners)]
            per = -(-args.agents // args.workers)
            workers = []
            for w in range(args.workers):
                first, last = w * per, min(args.agents, (w + 1) * per)
                if first >= last:
                    continue
                cmd = [
                    sys.executable,
                    "-m",
                    "bench.fleet.schedload",
                    "--worker",
                    f"{first}-{last}",
                    "--url",
                    url,
                    "--work",
                    str(work),
                    "--layers",
                    str(args.layers),
                    "--seconds",
                    str(args.seconds),
                    "--status-wait",
                    str(args.status_wait),
                    "--report-interval",
                    str(args.report_interval),
                ]
                workers.append(subprocess.Popen(cmd, stdout=subprocess.PIPE))
            cpu0 = _cpu(sched.pid)
            opens0 = _passive_opens()
            results = [json.loads(p.communicate()[0].decode().strip().splitlines()[-1]) for p in workers]
            summary = _summary(results, args.agents)
            summary["scheduler_cpu_s"] = round(_cpu(sched.pid) - cpu0, 2)
            summary["scheduler_connections"] = _passive_opens() - opens0
        finally:
            for burner in burners:
                burner.kill()
                burner.wait()
            sched.terminate()
            sched.wait()
            log.close()
        print(json.dumps(summary, indent=1))
    return 0


def _passive_opens() -> int:
    """TCP connections accepted in this network namespace so far (``nstat``'s TcpPassiveOpens)."""
    lines = Path("/proc/net/snmp").read_text().splitlines()
    tcp = [line.split() for line in lines if line.startswith("Tcp:")]
    return int(tcp[1][tcp[0].index("PassiveOpens")])


def _cpu(pid: int) -> float:
    fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields_[11]) + int(fields_[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    sys.exit(main())
