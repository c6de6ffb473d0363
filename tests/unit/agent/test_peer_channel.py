"""The TLS channel under a peer link, over a real socket pair: a piece body comes in with few
socket reads, and waiting for it never waits for bytes the peer does not send."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.agent.peer_channel import PlainChannel, TlsChannel, tls_handshake
from shoal.p2p.tls import TlsDirectory
from shoal.testing.pki import TestCA


class CountingSocket(socket.socket):
    """A socket that counts its reads."""

    reads = 0

    def recv_into(self, buffer: memoryview | bytearray, nbytes: int = 0, flags: int = 0) -> int:  # type: ignore[override]
        self.reads += 1
        return super().recv_into(buffer, nbytes, flags)


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of a loopback TCP connection (the peer wire's kind of socket: a Unix socket
    pair ignores ``SO_RCVLOWAT`` when polled)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        b = socket.create_connection(listener.getsockname())
        a, _ = listener.accept()
    return a, b


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[TlsChannel, TlsChannel, CountingSocket]]:
    """(sender, receiver, the receiver's socket): TLS 1.3 between two certificates of one CA."""
    ca = TestCA.create()
    server = TlsDirectory(ca.issue(tmp_path / "a", "node-a", ips=("127.0.0.1",)))
    client = TlsDirectory(ca.issue(tmp_path / "b", "node-b", ips=("127.0.0.1",)))
    a, b = _tcp_pair()
    counted = CountingSocket(b.family, b.type, fileno=b.detach())
    deadline = time.monotonic() + 10
    result: list[TlsChannel] = []
    thread = threading.Thread(
        target=lambda: result.append(
            tls_handshake(a, server.server_context(), server=True, first=b"", deadline=deadline)
        )
    )
    thread.start()
    receiver = tls_handshake(counted, client.client_context(), server=False, first=b"", deadline=deadline)
    thread.join(10)
    (sender,) = result
    for s in (a, counted):
        s.settimeout(None)
    counted.reads = 0
    yield sender, receiver, counted
    a.close()
    counted.close()


def _receive(receiver: TlsChannel, sizes: list[int]) -> list[bytes]:
    """Read ``sizes`` bytes in turn with ``recv_exactly``, in a thread; fail (and unblock it)
    if it waits more than a few seconds: for bytes the peer never sent."""
    out: list[bytes] = []

    def run() -> None:
        for size in sizes:
            buf = bytearray(size)
            got = receiver.recv_exactly(memoryview(buf))
            out.append(bytes(buf[:got]))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():
        receiver.sock.shutdown(socket.SHUT_RDWR)
        thread.join(5)
        pytest.fail(f"recv_exactly waited for bytes never sent (got {[len(o) for o in out]} of {sizes})")
    return out


@pytest.mark.parametrize("body", [1, 100, 16383, 16384, 16385, 50_000, 300_000, (1 << 20) + 7])
@pytest.mark.parametrize("record", [1 << 10, 256 << 10])
def test_a_body_is_read_whole_without_waiting_for_more(
    pair: tuple[TlsChannel, TlsChannel, CountingSocket], body: int, record: int
) -> None:
    """A header and its body sent together, then silence: the body's read returns, whether
    its records are small (more ciphertext per byte) or the header's record holds its start."""
    sender, receiver, _ = pair
    header, data, trailer = os.urandom(13), os.urandom(body), os.urandom(9)
    message = header + data + trailer

    def send() -> None:
        for at in range(0, len(message), record):
            sender.sendall(message[at : at + record])

    thread = threading.Thread(target=send)
    thread.start()
    assert _receive(receiver, [len(header), body, len(trailer)]) == [header, data, trailer]
    thread.join(5)


def test_a_trickling_body_takes_few_socket_reads(pair: tuple[TlsChannel, TlsChannel, CountingSocket]) -> None:
    """A shaped link delivers a few KiB at a time: the reader waits in the kernel for as much
    as the body still owes rather than waking for each segment (it used to, hundreds of
    times per MiB)."""
    sender, receiver, counted = pair
    body = os.urandom(1 << 20)
    with sender._lock:
        sender._tls.write(body)
        records = sender._outgoing.read()

    def trickle() -> None:
        for at in range(0, len(records), 4096):
            sender.sock.sendall(records[at : at + 4096])
            time.sleep(0.0002)

    thread = threading.Thread(target=trickle)
    thread.start()
    assert _receive(receiver, [len(body)]) == [body]
    thread.join(5)
    # 1 MiB in 256 KiB waits, then the last record's worth as it comes
    assert counted.reads <= 16


def _wakeups() -> int:
    """How many times the calling thread has slept and been woken (voluntary switches)."""
    for line in Path("/proc/thread-self/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in /proc/thread-self/status")


def _trickle(sock: socket.socket, data: bytes, chunk: int = 4096) -> threading.Thread:
    """Send ``data`` a few KiB at a time, as a shaped link delivers it."""

    def run() -> None:
        for at in range(0, len(data), chunk):
            sock.sendall(data[at : at + chunk])
            time.sleep(0.0005)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _wakeups_to_receive(receiver: PlainChannel | TlsChannel, size: int) -> tuple[bytes, int]:
    out: list[tuple[bytes, int]] = []

    def run() -> None:
        buf = bytearray(size)
        before = _wakeups()
        got = receiver.recv_exactly(memoryview(buf))
        out.append((bytes(buf[:got]), _wakeups() - before))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "recv_exactly did not return"
    return out[0]


def test_a_trickling_body_wakes_the_clear_reader_once_per_batch() -> None:
    """A body that arrives 4 KiB at a time (256 sends per MiB) wakes the reader a few times,
    not once per segment: it used to wake hundreds of times per MiB in ``MSG_WAITALL``."""
    a, b = _tcp_pair()
    with a, b:
        body = os.urandom(1 << 20)
        thread = _trickle(a, body)
        got, wakeups = _wakeups_to_receive(PlainChannel(b), len(body))
        thread.join(10)
    assert got == body
    assert wakeups <= 32


def test_a_trickling_tls_body_wakes_the_reader_once_per_batch(
    pair: tuple[TlsChannel, TlsChannel, CountingSocket],
) -> None:
    sender, receiver, _ = pair
    body = os.urandom(1 << 20)
    with sender._lock:
        sender._tls.write(body)
        records = sender._outgoing.read()
    thread = _trickle(sender.sock, records)
    got, wakeups = _wakeups_to_receive(receiver, len(body))
    thread.join(10)
    assert got == body
    # 256 KiB waits, then the last record's worth as it comes
    assert wakeups <= 32


@pytest.mark.parametrize("body", [1, 1000, 300_000, (1 << 20) + 7])
def test_a_clear_body_is_read_whole_without_waiting_for_more(body: int) -> None:
    """A header, its body and silence: the body's read returns however the bytes were cut,
    and the frames after it are read as they come (the wake-up mark is back to one byte)."""
    a, b = _tcp_pair()
    with a, b:
        channel = PlainChannel(b)
        data = os.urandom(body)
        a.sendall(data[: body // 3])
        thread = _trickle(a, data[body // 3 :], chunk=65536)
        got, _ = _wakeups_to_receive(channel, body)
        thread.join(10)
        assert got == data
        a.sendall(b"xy")
        buf = bytearray(16)
        b.settimeout(5)
        assert channel.recv_into(memoryview(buf)) == 2


def test_a_close_notify_inside_a_body_ends_its_read_at_once(
    pair: tuple[TlsChannel, TlsChannel, CountingSocket],
) -> None:
    """A peer that sends part of a body, then TLS close_notify, and leaves its connection
    open: the body's read returns what came within a second or so (the piece then fails),
    instead of waiting for the rest until the link's liveness bound (issue 16, F7)."""
    sender, receiver, _ = pair
    part = os.urandom(100_000)
    sender.sendall(part)
    with sender._lock:
        with contextlib.suppress(ssl.SSLWantReadError):
            sender._tls.unwrap()
        alert = sender._outgoing.read()
    assert alert
    sender.sock.sendall(alert)
    out: list[int] = []
    buf = bytearray(1 << 20)
    thread = threading.Thread(target=lambda: out.append(receiver.recv_exactly(memoryview(buf))), daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():
        receiver.sock.shutdown(socket.SHUT_RDWR)
        thread.join(5)
        pytest.fail("the body's read waited past the close_notify")
    assert out == [len(part)]
    assert bytes(buf[: len(part)]) == part


def test_a_close_notify_between_frames_ends_the_stream(pair: tuple[TlsChannel, TlsChannel, CountingSocket]) -> None:
    """close_notify while the reader waits for control frames, the connection left open: the
    read says the stream ended (0). ``SSLObject.read`` answers 0, not an error, once a
    close_notify came; the reader used to loop on it for ever, holding the channel's lock."""
    sender, receiver, _ = pair
    with sender._lock:
        with contextlib.suppress(ssl.SSLWantReadError):
            sender._tls.unwrap()
        alert = sender._outgoing.read()
    sender.sock.sendall(alert)
    out: list[int] = []
    thread = threading.Thread(target=lambda: out.append(receiver.recv_into(memoryview(bytearray(4096)))), daemon=True)
    thread.start()
    thread.join(5)
    assert out == [0], "the read did not end at the close_notify"
