"""The TLS channel under a peer link, over a real socket pair: a piece body comes in with few
socket reads, and waiting for it never waits for bytes the peer does not send."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.agent.peer_channel import PlainChannel, RecordBounds, TlsChannel, tls_handshake
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
    for s in (a, b):  # as peer links are: each small send leaves at once
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
    # 1 MiB in 256 KiB waits, then the rest of the last record at once
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


def _record(length: int, kind: int = 23) -> bytes:
    return bytes([kind, 3, 3]) + length.to_bytes(2, "big") + os.urandom(length)


@pytest.mark.parametrize("cut", [1, 2, 4, 5, 6, 100, 4096])
def test_record_bounds_follow_headers_cut_anywhere(cut: int) -> None:
    """Fed the stream in pieces cut at any byte (inside headers too), the bounds know where
    the last record seen ends."""
    records = [_record(n) for n in (1, 517, 16401, 0, 300, 16401)]
    stream = b"".join(records)
    bounds = RecordBounds()
    ends = []
    total = 0
    for r in records:
        total += len(r)
        ends.append(total)
    for at in range(0, len(stream), cut):
        bounds.feed(memoryview(stream)[at : at + cut])
        fed = min(at + cut, len(stream))
        assert bounds.fed == fed
        # the last record whose header is complete ends at its end
        started = [e for e, r in zip(ends, records, strict=True) if e - len(r) + 5 <= fed]
        assert bounds.record_end == (started[-1] if started else 0)


def test_record_bounds_owe_the_rest_of_a_record_cut_short() -> None:
    bounds = RecordBounds()
    record = _record(16401)  # 16 KiB of plaintext, type byte and tag
    bounds.feed(record[:1000])
    assert bounds.owed(1) == len(record) - 1000
    assert bounds.owed(16384) == len(record) - 1000
    # more plaintext than the record can hold: at least a header and a byte each beyond it
    assert bounds.owed(16384 + 10) == len(record) - 1000 + 5 + 10
    bounds.feed(record[1000:])
    assert bounds.owed(7) == 5 + 7
    bounds.feed(_record(40)[:3])  # cut inside the next header
    assert bounds.owed(7) == 2 + 7


def test_a_tls_body_tail_is_waited_for_whole(pair: tuple[TlsChannel, TlsChannel, CountingSocket]) -> None:
    """The last record of a body arriving a few hundred bytes at a time is taken in one read
    once whole, not one read per arrival."""
    sender, receiver, counted = pair
    body = os.urandom(16 << 10)  # one record
    with sender._lock:
        sender._tls.write(body)
        records = sender._outgoing.read()
    thread = _trickle(sender.sock, records, chunk=512)
    assert _receive(receiver, [len(body)]) == [body]
    thread.join(10)
    assert counted.reads <= 2
