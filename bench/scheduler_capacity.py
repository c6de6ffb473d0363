"""``python -m bench.scheduler_capacity``: how much one scheduler core carries, and its memory.

The measurements, printed side by side:

* HTTP: joins + reports per second answered by a real ``Scheduler`` (aiohttp on uvloop, as
  ``shoal scheduler`` runs), driven by a separate aiohttp load process (each pinned to a
  core with ``--pin``). The server's CPU use over the run says whether the figure is the
  server's limit (~100%) or the load generator's. A second run sends reports only, for the
  server's CPU per report call.
* Handler: ``Scheduler.answer_report`` called directly (parse the body, update the state,
  encode the answer: the report handler's whole work but HTTP), CPU time per call.
* State: the same mix applied to ``SchedulerState`` directly, no HTTP: the ceiling of the
  state machine itself.
* Hashes wake-up: a blob's 128 hashes published one report at a time with 1,000 long-polls
  waiting on it; after each, every waiter's answer is taken and rendered (``state.hashes``
  and ``Scheduler.render_hashes``, as each woken ``GET .../hashes`` does) and it polls again
  from its new start: CPU per waiter and hash, HTTP aside.
* RSS: a fresh process that fills one ``SchedulerState`` with 10,000 peers in each of 100
  tasks (1,000,000 memberships: every peer joins holding 1..128 pieces and is handed its
  parents; each task's lease holder publishes all 128 piece hashes), then reads its VmRSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from shoal.p2p.pieces import choose_piece_size, piece_count
from shoal.p2p.protocol import JoinRequest, Report, to_json
from shoal.scheduler.config import SchedulerConfig
from shoal.scheduler.state import SchedulerState

MiB = 1 << 20
SIZE = 2048 * MiB
"""2 GiB: 128 pieces of the 16 MiB the agents' rule gives it (the scheduler accepts no other piece size)."""
PIECE = choose_piece_size(SIZE)
PIECES = piece_count(SIZE, PIECE)
REPORTS_PER_JOIN = 4


def digest(i: int) -> str:
    return f"sha256:{i:064x}"


def peer(i: int) -> tuple[str, str]:
    address = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:65001"
    return address, address


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pin(core: int) -> None:
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[core % len(cores)]})


@dataclass
class Workload:
    """Peers spread over tasks; each (peer, task) joins once (unless not ``joins``), then reports
    REPORTS_PER_JOIN times (each report carries the blob's size: it may start the task)."""

    peers: int
    tasks: int
    joins: bool = True

    def ops(self) -> Any:
        """Endless (kind, digest, body) calls: waves of joins, each followed by its reports."""
        rng = random.Random(1)
        round_ = 0
        while True:
            for p in range(self.peers):
                peer_id, address = peer(p + round_ * self.peers)
                task = digest(rng.randrange(self.tasks))
                if self.joins:
                    yield "join", task, JoinRequest(peer_id, address, SIZE, PIECE)
                for r in range(1, REPORTS_PER_JOIN + 1):
                    yield "report", task, Report(peer_id, address, r, r * PIECE, size=SIZE, piece_size=PIECE)
            round_ += 1


# -- state only ------------------------------------------------------------------------------
def bench_state(seconds: float) -> float:
    state = SchedulerState(SchedulerConfig(), rng=random.Random(1))
    ops = Workload(peers=2000, tasks=20).ops()
    done = 0
    start = time.perf_counter()
    now = 0.0
    while True:
        for _ in range(1000):
            kind, task, body = next(ops)
            now += 1e-5
            if kind == "join":
                state.join(task, body, now)
            else:
                state.report(task, body, now)
        done += 1000
        if time.perf_counter() - start > seconds:
            return done / (time.perf_counter() - start)


# -- the hashes long-poll ----------------------------------------------------------------------
def bench_hashes_wake(waiters: int = 1000) -> float:
    """CPU microseconds per waiter and published hash: its woken answer, rendered, and its next poll."""
    from shoal.scheduler.server import Scheduler

    node = Scheduler(SchedulerConfig(listen="127.0.0.1:0", peer_token="bench"))
    task = digest(0)
    holder, address = peer(0)
    node.state.join(task, JoinRequest(holder, address, SIZE, PIECE), 0.0)
    clock = time.process_time
    spent = 0.0
    for index in range(PIECES):
        rep = Report(holder, address, index + 1, (index + 1) * PIECE, hashes={index: f"{index:064x}"})
        node.state.report(task, rep, 1.0 + index)
        started = clock()
        for _ in range(waiters):
            node.render_hashes(task, node.state.hashes(task, index))
            node.state.hashes(task, index + 1)
        spent += clock() - started
    return spent / (waiters * PIECES) * 1e6


# -- HTTP --------------------------------------------------------------------------------------
def serve(pinned: bool) -> None:
    """(subprocess) a scheduler on 127.0.0.1, its URL on stdout, until stdin closes."""
    if pinned:
        pin(0)
    from shoal.cli.runtime import run
    from shoal.scheduler.server import Scheduler

    async def main() -> None:
        node = Scheduler(SchedulerConfig(listen="127.0.0.1:0", peer_token="bench"))
        print(await node.start(), flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)
        await node.stop()

    run(main())


def load(url: str, seconds: float, concurrency: int, pinned: bool, joins: bool, client: str) -> None:
    """(subprocess) drive ``url`` with joins and reports; print {"ops", "errors", "seconds"}."""
    if pinned:
        pin(1)
    from shoal.cli.runtime import run

    result: dict[str, float] = {}
    ops = Workload(peers=2000, tasks=20, joins=joins).ops()
    done = errors = 0
    deadline = time.perf_counter() + seconds

    async def aiohttp_worker(session: aiohttp.ClientSession) -> None:
        nonlocal done, errors
        while time.perf_counter() < deadline:
            kind, task, body = next(ops)
            async with session.post(f"{url}/v1/tasks/{task}/{kind}", json=to_json(body)) as resp:
                await resp.read()
                if resp.status == 200:
                    done += 1
                else:
                    errors += 1

    async def raw_worker() -> None:
        """One keep-alive connection, one request in flight, as an agent's session holds it;
        HTTP/1.1 written and read by hand (an aiohttp client costs more CPU per call than the
        server, so it left the server idle half the time)."""
        nonlocal done, errors
        host, port = url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < deadline:
                kind, task, body = next(ops)
                data = json.dumps(to_json(body)).encode()
                head = f"POST /v1/tasks/{task}/{kind} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer bench\r\n"
                head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
                writer.write(head.encode() + data)
                answer = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length: *([0-9]+)", answer)
                assert length is not None, answer
                await reader.readexactly(int(length[1]))
                if answer.startswith(b"HTTP/1.1 200 "):
                    done += 1
                else:
                    errors += 1
        finally:
            writer.close()

    async def main() -> None:
        start = time.perf_counter()
        if client == "raw":
            await asyncio.gather(*(raw_worker() for _ in range(concurrency)))
        else:
            connector = aiohttp.TCPConnector(limit=concurrency)
            headers = {"Authorization": "Bearer bench"}
            async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
                await asyncio.gather(*(aiohttp_worker(session) for _ in range(concurrency)))
        result.update(ops=done, errors=errors, seconds=time.perf_counter() - start)

    run(main())
    print(json.dumps(result), flush=True)


def bench_http(
    seconds: float, concurrency: int, pinned: bool, client: str, joins: bool = True
) -> tuple[float, float, int]:
    """(ops/s, server CPU share, errors)"""
    me = [sys.executable, "-m", "bench.scheduler_capacity", "--client", client, *(["--pin"] if pinned else [])]
    server = subprocess.Popen([*me, "--role", "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        assert server.stdin is not None
        url = server.stdout.readline().strip()
        drive = [
            *me,
            "--role",
            "load",
            "--url",
            url,
            "--concurrency",
            str(concurrency),
            *([] if joins else ["--no-joins"]),
        ]
        subprocess.run([*drive, "--seconds", "1"], check=True, capture_output=True)
        cpu0, t0 = cpu_seconds(server.pid), time.perf_counter()
        out = subprocess.run([*drive, "--seconds", str(seconds)], check=True, capture_output=True, text=True).stdout
        cpu = (cpu_seconds(server.pid) - cpu0) / (time.perf_counter() - t0)
        result = json.loads(out.strip().splitlines()[-1])
        return result["ops"] / result["seconds"], cpu, int(result["errors"])
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(timeout=10)


# -- the report handler without HTTP -----------------------------------------------------------
def bench_handler(seconds: float) -> tuple[float, int]:
    """(CPU microseconds per ``answer_report`` call, calls timed): the same mix, bodies encoded beforehand."""
    from shoal.p2p.protocol import dumps
    from shoal.scheduler.server import Scheduler

    node = Scheduler(SchedulerConfig(listen="127.0.0.1:0", peer_token="bench"))
    ops = Workload(peers=2000, tasks=20).ops()
    calls = [(kind, task, dumps(body)) for kind, task, body in (next(ops) for _ in range(200_000))]
    for kind, task, body in calls[:20_000]:  # warm: every peer in its tasks
        (node.answer_join if kind == "join" else node.answer_report)(task, body)
    spent = timed = 0
    deadline = time.perf_counter() + seconds
    clock = time.thread_time_ns
    for kind, task, body in calls[20_000:]:
        if kind == "join":
            node.answer_join(task, body)
            continue
        started = clock()
        node.answer_report(task, body)
        spent += clock() - started
        timed += 1
        if time.perf_counter() > deadline:
            break
    return spent / 1e3 / max(1, timed), timed


# -- memory ------------------------------------------------------------------------------------
def fill(peers: int, tasks: int) -> None:
    """(subprocess) fill a state with ``peers`` x ``tasks`` memberships; print RSS figures."""
    before = rss_kib()
    state = SchedulerState(SchedulerConfig(), rng=random.Random(1))
    ids = [peer(p) for p in range(peers)]
    hashes = {i: f"{i:064x}" for i in range(PIECES)}
    start = time.perf_counter()
    now = 0.0
    for t in range(tasks):
        task = digest(t)
        for p, (peer_id, address) in enumerate(ids):
            now += 1e-6
            state.join(task, JoinRequest(peer_id, address, SIZE, PIECE, pieces=1 + p % PIECES), now)
            if p == 0:  # the lease holder publishes every piece hash
                state.report(task, Report(peer_id, address, PIECES, SIZE, hashes=hashes), now)
    seconds = time.perf_counter() - start
    after = rss_kib()
    stats = state.stats()
    print(
        json.dumps(
            dict(
                before_kib=before,
                after_kib=after,
                tasks=stats.tasks,
                peers=stats.peers,
                memberships=sum(len(t.members) for t in state.tasks.values()),
                ops_per_s=(peers + 1) * tasks / seconds,
            )
        ),
        flush=True,
    )


def bench_rss(peers: int, tasks: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.scheduler_capacity", "--role", "fill", "--peers", str(peers)]
    out = subprocess.run([*cmd, "--tasks", str(tasks)], check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.scheduler_capacity", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="length of each throughput run (default 5)")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight from the load process")
    p.add_argument("--peers", type=int, default=10_000, help="peers per task for the RSS run (default 10000)")
    p.add_argument("--tasks", type=int, default=100, help="tasks for the RSS run (default 100)")
    p.add_argument(
        "--pin", action="store_true", help="pin the server and the load process to one core each (idle machines only)"
    )
    p.add_argument(
        "--client",
        choices=["raw", "aiohttp"],
        default="raw",
        help="load generator: HTTP/1.1 by hand on keep-alive connections (default), or aiohttp's client",
    )
    p.add_argument("--role", choices=["main", "serve", "load", "fill"], default="main", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--no-joins", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role == "serve":
        serve(args.pin)
        return
    if args.role == "load":
        load(args.url, args.seconds, args.concurrency, args.pin, not args.no_joins, args.client)
        return
    if args.role == "fill":
        fill(args.peers, args.tasks)
        return

    print(f"scheduler capacity: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}", flush=True)
    http, cpu, errors = bench_http(args.seconds, args.concurrency, args.pin, args.client)
    reports, reports_cpu, report_errors = bench_http(args.seconds, args.concurrency, args.pin, args.client, joins=False)
    handler, handled = bench_handler(args.seconds)
    state = bench_state(args.seconds)
    wake = bench_hashes_wake()
    mem = bench_rss(args.peers, args.tasks)
    used = (mem["after_kib"] - mem["before_kib"]) * 1024
    rows = [
        ("HTTP joins+reports /s (measured)", f"{http:,.0f}", f"server used {cpu:.0%} of a core, {errors} errors"),
        (
            "HTTP joins+reports per server CPU-second",
            f"{http / max(cpu, 1e-9):,.0f}",
            "what one saturated core answers (the load process, not the server, was the limit if CPU < 90%)",
        ),
        (
            "HTTP reports only: server CPU per report",
            f"{reports_cpu / max(reports, 1e-9) * 1e6:,.1f} us",
            f"{reports:,.0f} reports/s, server used {reports_cpu:.0%} of a core, {report_errors} errors",
        ),
        (
            "report handler without HTTP: CPU per call",
            f"{handler:,.1f} us",
            f"Scheduler.answer_report (parse, state, encode), {handled:,} calls",
        ),
        ("SchedulerState joins+reports /s", f"{state:,.0f}", f"HTTP reaches {http / state:.0%} of it"),
        (
            "hashes wake-up: CPU per waiter and hash",
            f"{wake:,.2f} us",
            "woken answer (state + render) and the next poll, 1,000 waiters, 128 hashes",
        ),
        (
            f"RSS, {mem['peers']:,} peers x {mem['tasks']} tasks",
            f"{mem['after_kib'] / 1024:,.0f} MiB",
            f"{used / 1e6:,.0f} MB for state, {used / max(1, mem['memberships']):.0f} B/membership",
        ),
        ("  filling it (joins /s)", f"{mem['ops_per_s']:,.0f}", f"{mem['memberships']:,} memberships"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>12}  note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>12}  {note}")


if __name__ == "__main__":
    main()
