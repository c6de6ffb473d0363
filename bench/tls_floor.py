"""The least TLS can cost here, beside what the peer wire's channel costs: ``python -m bench.tls_floor``.

The same bytes, from a file in the page cache to a buffer, one sending and one receiving
thread over TCP loopback (no shaping: the cost of the bytes, not of waiting for them),
each thread's own CPU time (``time.thread_time``) per MiB:

- ``clear``: :class:`~shoal.agent.peer_channel.PlainChannel` (``sendfile`` out, ``recv_into``
  in): the baseline TLS is held against;
- ``channel``: :class:`~shoal.agent.peer_channel.TlsChannel`, the agent's TLS channel
  (``ssl.SSLObject`` over memory buffers, encrypting from the mapped file);
- ``sslsocket``: the other design Python's ``ssl`` allows, a non-blocking ``ssl.SSLSocket``
  that OpenSSL reads and writes itself (no memory buffers, one record per ``recv``);
- ``crypto``: no socket at all, an ``SSLObject`` pair in one thread: encrypting and
  decrypting over memory buffers, the floor of any design without kernel TLS.

``tls - clear`` of a row is what encryption adds per MiB sent plus per MiB received: what
``bench.fleet`` adds per MiB delivered when a node sends about as much as it receives.
Results: docs/security.md ("What encryption costs").
"""

from __future__ import annotations

import argparse
import contextlib
import mmap
import os
import select
import socket
import ssl
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from shoal.agent.peer_channel import PlainChannel, TlsChannel, tls_handshake
from shoal.p2p.tls import TlsDirectory
from shoal.testing.pki import TestCA

SLICE = 256 << 10
"""bytes per send or encryption step, as the agent's channel"""
MiB = 1 << 20

Ends = tuple[Callable[[], None], Callable[[], None]]
"""(send everything, receive everything): each run in its own thread"""


def _pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        dialled = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
    return accepted, dialled


def _closing(work: Callable[[], None], sock: socket.socket) -> Callable[[], None]:
    """``work``, then ``sock`` closed (one close: nothing against a run of MiBs)."""

    def run() -> None:
        try:
            work()
        finally:
            sock.close()

    return run


def _receive_all(read: Callable[[memoryview], int], size: int) -> None:
    buffer = memoryview(bytearray(MiB))
    got = 0
    while got < size:
        n = read(buffer[: min(MiB, size - got)])
        if n <= 0:
            raise OSError("the stream ended early")
        got += n


def _channel_ends(
    sender: PlainChannel | TlsChannel, receiver: PlainChannel | TlsChannel, blob: Path, size: int
) -> Ends:
    """The file sent as a link's writer sends a piece, and read as its reader reads a body."""
    fd = os.open(blob, os.O_RDONLY)

    def send() -> None:
        sender.send_file(fd, 0, size)
        os.close(fd)

    return _closing(send, sender.sock), _closing(lambda: _receive_all(receiver.recv_exactly, size), receiver.sock)


def _clear(blob: Path, size: int, _tls: tuple[TlsDirectory, TlsDirectory]) -> Ends:
    out, into = _pair()
    return _channel_ends(PlainChannel(out), PlainChannel(into), blob, size)


def _channel(blob: Path, size: int, tls: tuple[TlsDirectory, TlsDirectory]) -> Ends:
    out, into = _pair()
    deadline = time.monotonic() + 10
    done: list[TlsChannel] = []
    server = threading.Thread(
        target=lambda: done.append(
            tls_handshake(out, tls[0].server_context(), server=True, first=b"", deadline=deadline)
        )
    )
    server.start()
    receiver = tls_handshake(into, tls[1].client_context(), server=False, first=b"", deadline=deadline)
    server.join()
    (sender,) = done
    for sock in (out, into):
        sock.settimeout(None)
    return _channel_ends(sender, receiver, blob, size)


def _sslsocket(blob: Path, size: int, tls: tuple[TlsDirectory, TlsDirectory]) -> Ends:
    out, into = _pair()
    wrapped: list[ssl.SSLSocket] = []
    server = threading.Thread(target=lambda: wrapped.append(tls[0].server_context().wrap_socket(out, server_side=True)))
    server.start()
    receiver = tls[1].client_context().wrap_socket(into)
    server.join()
    (sender,) = wrapped
    for sock in (sender, receiver):
        sock.setblocking(False)  # waits happen in poll, outside any lock a real link would hold

    def send() -> None:
        poll = select.poll()
        poll.register(sender.fileno(), select.POLLOUT)
        with open(blob, "rb") as file, mmap.mmap(file.fileno(), size, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            at = 0
            while at < size:
                try:
                    at += sender.send(view[at : at + SLICE])
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    poll.poll()
            view.release()

    def read(view: memoryview) -> int:
        poll = select.poll()
        poll.register(receiver.fileno(), select.POLLIN)
        got = 0
        while got < len(view):
            try:
                got += receiver.recv_into(view[got:], len(view) - got)
            except ssl.SSLWantReadError:
                poll.poll()
        return got

    return _closing(send, sender), _closing(lambda: _receive_all(read, size), receiver)


def _crypto(blob: Path, size: int, tls: tuple[TlsDirectory, TlsDirectory]) -> tuple[float, float]:
    """Encrypting and decrypting ``size`` bytes over memory buffers: (send, receive) seconds."""
    server_in, server_out, client_in, client_out = (ssl.MemoryBIO() for _ in range(4))
    server = tls[0].server_context().wrap_bio(server_in, server_out, server_side=True)
    client = tls[1].client_context().wrap_bio(client_in, client_out)
    for _ in range(10):  # the handshake, in memory
        for side, out, peer_in in ((client, client_out, server_in), (server, server_out, client_in)):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
            peer_in.write(out.read())
    buffer = memoryview(bytearray(MiB))
    send_s = receive_s = 0.0
    with open(blob, "rb") as file, mmap.mmap(file.fileno(), size, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        for at in range(0, size, SLICE):
            t = time.thread_time()
            server.write(view[at : at + SLICE])
            records = server_out.read()
            t2 = time.thread_time()
            client_in.write(records)
            got = 0
            while True:
                try:
                    got += client.read(MiB - got, buffer[got:])  # type: ignore[operator]  # a count
                except ssl.SSLWantReadError:
                    break
            send_s += t2 - t
            receive_s += time.thread_time() - t2
        view.release()
    return send_s, receive_s


def _timed(ends: Ends) -> tuple[float, float]:
    spent = [0.0, 0.0]

    def run(which: int) -> None:
        start = time.thread_time()
        ends[which]()
        spent[which] = time.thread_time() - start

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return spent[0], spent[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="MiB per run")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    size = args.size * MiB
    with tempfile.TemporaryDirectory(prefix="tls-floor-") as tmp:
        work = Path(tmp)
        blob = work / "blob"
        blob.write_bytes(os.urandom(size))
        ca = TestCA.create()
        tls = (
            TlsDirectory(ca.issue(work / "a", "node-a", ips=("127.0.0.1",))),
            TlsDirectory(ca.issue(work / "b", "node-b", ips=("127.0.0.1",))),
        )
        designs = {"clear": _clear, "channel": _channel, "sslsocket": _sslsocket}
        rows: dict[str, list[tuple[float, float]]] = {name: [] for name in [*designs, "crypto"]}
        for r in range(args.rounds):
            order = list(designs) if r % 2 == 0 else list(designs)[::-1]
            for name in order:
                rows[name].append(_timed(designs[name](blob, size, tls)))
            rows["crypto"].append(_crypto(blob, size, tls))
    mib = size / MiB
    clear = sum(statistics.median(s[i] for s in rows["clear"]) for i in (0, 1)) * 1000 / mib
    print(f"{args.size} MiB over TCP loopback, medians of {args.rounds} rounds, ms of CPU per MiB:")
    print(f"{'design':10} {'send':>6} {'receive':>8} {'sum':>6} {'- clear':>8}")
    for name, samples in rows.items():
        send, receive = (statistics.median(s[i] for s in samples) * 1000 / mib for i in (0, 1))
        extra = "" if name == "crypto" else f"{send + receive - clear:+8.2f}"
        print(f"{name:10} {send:6.2f} {receive:8.2f} {send + receive:6.2f} {extra}")
    print("crypto: encryption and decryption alone, no socket (what any TLS here costs at least)")


if __name__ == "__main__":
    main()
