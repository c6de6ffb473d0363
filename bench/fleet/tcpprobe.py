"""A tiny TCP throughput probe for ``--selftest``; runs inside a namespace.

``python -m bench.fleet.tcpprobe recv PORT SECONDS``: accept connections for SECONDS, print
``{peer_ip: bits_per_second}`` as JSON, counting bytes between 1 s and SECONDS (slow start
and connection set-up are left out).
``python -m bench.fleet.tcpprobe send HOST PORT SECONDS``: send zeros for SECONDS.
"""

from __future__ import annotations

import json
import selectors
import socket
import sys
import time

_WARMUP = 1.0


def receive(port: int, seconds: float) -> dict[str, float]:
    server = socket.create_server(("0.0.0.0", port), backlog=64)
    server.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(server, selectors.EVENT_READ)
    counted: dict[str, int] = {}
    start = time.monotonic()
    deadline = start + seconds
    buf = bytearray(1 << 20)
    while (now := time.monotonic()) < deadline:
        for key, _ in sel.select(timeout=0.1):
            if key.fileobj is server:
                new, _addr = server.accept()
                new.setblocking(False)
                sel.register(new, selectors.EVENT_READ)
                continue
            conn = key.fileobj
            if not isinstance(conn, socket.socket):
                continue
            try:
                n = conn.recv_into(buf)
            except BlockingIOError:
                continue
            if n == 0:
                sel.unregister(conn)
                conn.close()
                continue
            if now - start >= _WARMUP:
                peer = conn.getpeername()[0]
                counted[peer] = counted.get(peer, 0) + n
    window = seconds - _WARMUP
    return {peer: count * 8 / window for peer, count in counted.items()}


def send(host: str, port: int, seconds: float) -> None:
    for _ in range(50):
        try:
            sock = socket.create_connection((host, port), timeout=5)
            break
        except OSError:
            time.sleep(0.1)
    else:
        raise SystemExit(f"cannot connect to {host}:{port}")
    data = b"\0" * (1 << 18)
    deadline = time.monotonic() + seconds
    with sock:
        while time.monotonic() < deadline:
            sock.sendall(data)


def main(argv: list[str]) -> None:
    if argv[:1] == ["recv"] and len(argv) == 3:
        print(json.dumps(receive(int(argv[1]), float(argv[2]))))
    elif argv[:1] == ["send"] and len(argv) == 4:
        send(argv[1], int(argv[2]), float(argv[3]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
