"""CPU per MiB of the peer wire, clear and TLS side by side: ``python -m bench.peer_wire`` (root).

Two real :class:`~shoal.agent.peer_link.PeerLink` ends, each in its own process and network
namespace, joined through the fleet benchmark's shaped bridge (HTB at ``--bandwidth`` on both
ends of both veths, as ``bench.fleet`` builds them). The fetcher asks for every piece of a
blob with a window of requests in flight, as an agent does; the server sends them from a file
(``sendfile`` in clear, mapped and encrypted under TLS). Each process reports its own CPU
seconds (``getrusage``) from the end of the handshake to the last piece, divided by the MiB
moved: the sender's and the receiver's cost per MiB, per wire, in alternating rounds.

A fleet agent both receives and sends about one MiB per MiB delivered, so "send + receive"
is the figure to hold against ``bench.fleet``'s data-plane CPU (which also counts the
agent's event loop, HTTP client side and disk writes). ``--busy`` adds a Python thread busy
half the time to each end (an agent's loop: the link's threads then wait for the GIL);
``--perf-dir`` runs ``perf record`` on each end while linked. Results: docs/fleet-benchmark.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.fleet.netns import Host, Lab, plan_lab
from bench.fleet.shaping import apply_shaping, parse_rate
from shoal.agent.peer_link import PeerLink, PieceBody, answer, dial, peer_secret
from shoal.agent.piece_buffers import PieceBuffers
from shoal.p2p import wire
from shoal.p2p.pieces import choose_piece_size, piece_count, piece_span
from shoal.p2p.tls import TlsDirectory

DIGEST = "sha256:" + "5e" * 32
SECRET = peer_secret("bench")
PORT = 7700


_busy_cpu = 0.0
"""CPU seconds the ``--busy`` thread has used (left out of the link's figure)"""


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime - _busy_cpu


def _keep_busy() -> None:
    """Python work on another thread half the time, as an agent's event loop has: the link's
    threads then hand the GIL over at every release instead of finding it free."""
    global _busy_cpu
    while True:
        until = time.monotonic() + 0.001
        while time.monotonic() < until:
            sum(range(100))
        _busy_cpu = time.thread_time()
        time.sleep(0.001)


@contextlib.contextmanager
def _perf(prefix: str | None, role: str) -> Iterator[None]:
    """``perf record`` this process while the link runs (not its start-up), when asked."""
    if prefix is None:
        yield
        return
    argv = ["perf", "record", "-F", "4999", "-g", "-q", "-o", f"{prefix}-{role}.data", "-p", str(os.getpid())]
    proc = subprocess.Popen(argv)
    time.sleep(0.3)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


class _Handler:
    """A LinkHandler for either end: the server answers requests, the fetcher counts pieces."""

    def __init__(self, blob: Path, size: int, window: int) -> None:
        self.blob = blob
        self.size = size
        self.piece = choose_piece_size(size)
        self.pieces = piece_count(size, self.piece)
        self.window = window
        self.next = 0
        self.got = 0
        self.bytes = 0
        self.done = asyncio.Event()

    def request_more(self, link: PeerLink) -> None:
        while self.next < self.pieces and self.next - self.got < self.window:
            link.send(wire.Request(DIGEST, self.next))
            self.next += 1

    def link_events(self, link: PeerLink, events: list[wire.Event]) -> None:
        for event in events:
            if isinstance(event, wire.Interested):
                link.send(wire.Bitfield.of(DIGEST, event.pieces, range(event.pieces)))
            elif isinstance(event, wire.Request):
                offset, length = piece_span(event.index, self.size, self.piece)
                link.send_piece(DIGEST, event.index, lambda: self.blob, offset, length)

    def link_piece(self, link: PeerLink, piece: PieceBody) -> None:
        self.got += 1
        self.bytes += len(piece.data)
        piece.release()  # as an agent does once the piece is on file
        if self.got == self.pieces:
            self.done.set()
        else:
            self.request_more(link)

    def link_piece_sent(self, link: PeerLink, digest: str, index: int, length: int) -> None:
        self.bytes += length

    def link_piece_dropped(self, link: PeerLink, digest: str, index: int, aborted: bool) -> None:
        pass

    def link_closed(self, link: PeerLink, reason: str) -> None:
        self.done.set()


async def _serve(args: argparse.Namespace) -> dict[str, Any]:
    import socket

    tls = TlsDirectory(Path(args.tls)).server_context() if args.tls else None
    listener = socket.create_server((args.ip, PORT))
    sock, _ = await asyncio.to_thread(listener.accept)
    listener.close()
    first = sock.recv(1)
    channel, conn = await asyncio.to_thread(
        answer, sock, first, f"{args.ip}:{PORT}", SECRET, wire.NonceLog(), lambda _p, _i: None, None, tls
    )
    handler = _Handler(Path(args.blob), args.size, args.window)
    link = PeerLink(channel, conn, asyncio.get_running_loop(), handler, outbound=False)
    with _perf(args.perf, "send"):
        cpu = _cpu()
        link.start()
        await handler.done.wait()
        cpu = _cpu() - cpu
    return {"cpu_s": cpu, "bytes": handler.bytes}


async def _fetch(args: argparse.Namespace) -> dict[str, Any]:
    tls = TlsDirectory(Path(args.tls)).client_context() if args.tls else None
    deadline = time.monotonic() + 10
    while True:
        try:
            channel, conn = await asyncio.to_thread(
                dial, f"{args.peer}:{PORT}", f"{args.peer}:{PORT}", f"{args.ip}:{PORT}", SECRET, 5.0, args.ip, tls
            )
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
    handler = _Handler(Path(args.blob), args.size, args.window)
    link = PeerLink(channel, conn, asyncio.get_running_loop(), handler, outbound=True, buffers=PieceBuffers())
    with _perf(args.perf, "recv"):
        cpu, start = _cpu(), time.monotonic()
        link.start()
        link.send(wire.Interested(DIGEST, handler.pieces, args.size))
        handler.request_more(link)
        await handler.done.wait()
        result = {"cpu_s": _cpu() - cpu, "seconds": time.monotonic() - start, "bytes": handler.bytes}
    link.close("done")
    await asyncio.sleep(0.2)
    return result


def _one_end(args: argparse.Namespace) -> None:
    if args.busy:
        threading.Thread(target=_keep_busy, daemon=True).start()
    run = _serve if args.role == "serve" else _fetch
    print(json.dumps(asyncio.run(run(args))), flush=True)


def _result(stdout: str) -> dict[str, Any]:
    """The JSON line an end printed (perf, when asked for, may print lines too)."""
    return json.loads(next(line for line in reversed(stdout.splitlines()) if line.startswith("{")))  # type: ignore[no-any-return]


def _round(
    lab: Lab, work: Path, wire_kind: str, size: int, window: int, busy: bool, perf_dir: Path | None
) -> dict[str, float]:
    server, client = lab.plan.nodes
    me = [sys.executable, *(["-X", "perf"] if perf_dir else []), "-m", "bench.peer_wire"]
    common = ["--blob", str(work / "blob"), "--size", str(size), "--window", str(window), *(["--busy"] if busy else [])]
    if perf_dir is not None:
        common += ["--perf", str(perf_dir / f"{wire_kind}-{time.strftime('%H%M%S')}")]

    def end(node: Host, role: str, tls: str, *more: str) -> list[str]:
        mine = ["--tls", str(work / tls)] if wire_kind == "tls" else []
        return ["ip", "netns", "exec", node.netns, *me, "--role", role, "--ip", node.ip, *more, *common, *mine]

    serve = subprocess.Popen(end(server, "serve", "tls-a"), stdout=subprocess.PIPE, text=True)
    fetch = subprocess.run(
        end(client, "fetch", "tls-b", "--peer", server.ip), stdout=subprocess.PIPE, text=True, check=True, timeout=600
    )
    out, _ = serve.communicate(timeout=60)
    got, sent = _result(fetch.stdout), _result(out)
    if got["bytes"] != size or sent["bytes"] != size:
        raise RuntimeError(f"moved {got['bytes']} / {sent['bytes']} bytes, not {size}")
    mib = size / (1 << 20)
    return {
        "seconds": got["seconds"],
        "send_ms_per_mib": 1000 * sent["cpu_s"] / mib,
        "recv_ms_per_mib": 1000 * got["cpu_s"] / mib,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=lambda s: int(s.rstrip("M")) << 20 if s.endswith("M") else int(s))
    parser.add_argument("--bandwidth", default="100mbit")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=int, default=4, help="requests in flight")
    parser.add_argument("--wires", default="clear,tls")
    parser.add_argument("--busy", action="store_true", help="a Python thread busy half the time in each end")
    parser.add_argument("--perf-dir", type=Path, help="`perf record` both ends (while linked) into this directory")
    parser.add_argument("--role", choices=["serve", "fetch"], help=argparse.SUPPRESS)
    parser.add_argument("--ip", help=argparse.SUPPRESS)
    parser.add_argument("--peer", help=argparse.SUPPRESS)
    parser.add_argument("--blob", help=argparse.SUPPRESS)
    parser.add_argument("--tls", help=argparse.SUPPRESS)
    parser.add_argument("--perf", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        _one_end(args)
        return
    size = args.size or 64 << 20
    bps = parse_rate(args.bandwidth)
    wires = args.wires.split(",")
    from shoal.testing.pki import TestCA

    with tempfile.TemporaryDirectory(prefix="peer-wire-") as tmp, Lab(plan_lab(2, node_bps=bps, origin_bps=bps)) as lab:
        work = Path(tmp)
        apply_shaping(lab.plan)
        (work / "blob").write_bytes(os.urandom(size))
        ca = TestCA.create()
        for name, node in zip(("tls-a", "tls-b"), lab.plan.nodes, strict=True):
            ca.issue(work / name, name, ips=(node.ip,))
        results: dict[str, list[dict[str, float]]] = {w: [] for w in wires}
        for r in range(args.rounds):
            for w in wires if r % 2 == 0 else wires[::-1]:
                one = _round(lab, work, w, size, args.window, args.busy, args.perf_dir)
                results[w].append(one)
                print(f"round {r + 1} {w:5}: {json.dumps({k: round(v, 2) for k, v in one.items()})}", flush=True)
    print(f"{size >> 20} MiB at {args.bandwidth}, {args.rounds} rounds, medians:")
    print(f"{'wire':6} {'time s':>7} {'send ms/MiB':>12} {'recv ms/MiB':>12} {'sum':>6}")
    for w, rows in results.items():
        med = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
        total = med["send_ms_per_mib"] + med["recv_ms_per_mib"]
        print(f"{w:6} {med['seconds']:7.2f} {med['send_ms_per_mib']:12.2f} {med['recv_ms_per_mib']:12.2f} {total:6.2f}")


if __name__ == "__main__":
    main()
