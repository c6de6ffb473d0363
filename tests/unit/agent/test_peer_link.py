"""Peer links over real loopback sockets: the handshake's checks, pieces out with sendfile and
in with recv_into, and frames that arrive together with the handshake's last one."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import ssl
import threading
from pathlib import Path

import pytest

from shoal.agent.peer_channel import PlainChannel
from shoal.agent.peer_link import Channel, LinkError, PeerLink, PieceBody, answer, dial, peer_secret
from shoal.agent.piece_buffers import PieceBuffers
from shoal.p2p import wire
from shoal.p2p.tls import PeerIdentity, TlsDirectory
from shoal.testing.pki import TestCA

DIGEST = "sha256:" + "ab" * 32
SECRET = peer_secret("token")


class Recorder:
    """A LinkHandler that keeps what it is told."""

    def __init__(self) -> None:
        self.events: list[wire.Event] = []
        self.pieces: list[PieceBody] = []
        self.sent: list[tuple[str, int, int]] = []
        self.sent_in: list[int] = []
        """the threads link_piece_sent was called in"""
        self._loop = asyncio.get_running_loop()
        self.dropped: list[tuple[str, int, bool]] = []
        self.closed: list[str] = []
        self.changed = asyncio.Event()

    def _note(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def link_events(self, link: PeerLink, events: list[wire.Event]) -> None:
        self.events.extend(events)
        self._note()

    def link_piece(self, link: PeerLink, piece: PieceBody) -> None:
        self.pieces.append(piece)
        self._note()

    def link_piece_sent(self, link: PeerLink, digest: str, index: int, length: int) -> None:
        # in the link's writer thread
        self.sent_in.append(threading.get_ident())
        self.sent.append((digest, index, length))
        self._loop.call_soon_threadsafe(self._note)

    def link_piece_dropped(self, link: PeerLink, digest: str, index: int, aborted: bool) -> None:
        self.dropped.append((digest, index, aborted))
        self._note()

    def link_closed(self, link: PeerLink, reason: str) -> None:
        self.closed.append(reason)
        self._note()

    async def until(self, done: object, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not done():  # type: ignore[operator]
                await self.changed.wait()


class Listener:
    """A loopback listener whose accepted connection runs the server handshake in a thread."""

    def __init__(
        self,
        own_id: str = "127.0.0.1:7000",
        secret: bytes = SECRET,
        refuse: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.own_id = own_id
        self.secret = secret
        self.refuse = refuse
        self.tls = tls
        self.identities: list[PeerIdentity | None] = []
        self.result: list[tuple[Channel, wire.Connection] | BaseException] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _check(self, peer_id: str, identity: PeerIdentity | None) -> str | None:
        self.identities.append(identity)
        return self.refuse

    def _accept(self) -> None:
        conn_sock, _ = self.sock.accept()
        self.sock.close()
        try:
            first = conn_sock.recv(1)
            outcome = answer(conn_sock, first, self.own_id, self.secret, wire.NonceLog(), self._check, tls=self.tls)
            self.result.append(outcome)
        except BaseException as exc:  # handed to the test
            self.result.append(exc)
            conn_sock.close()

    def dispose(self) -> None:
        """Close whatever the server side still holds."""
        self.thread.join(5)
        self.sock.close()
        for outcome in self.result:
            if not isinstance(outcome, BaseException):
                outcome[0].sock.close()

    def server(self) -> tuple[Channel, wire.Connection]:
        self.thread.join(5)
        outcome = self.result[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


class TestHandshake:
    def test_both_sides_authenticate(self) -> None:
        listener = Listener()
        channel, conn = dial(listener.address, "127.0.0.1:7000", "127.0.0.1:7001", SECRET, 5.0)
        server_channel, server_conn = listener.server()
        assert conn.peer_id == "127.0.0.1:7000"
        assert server_conn.peer_id == "127.0.0.1:7001"
        assert listener.identities == [None]
        channel.sock.close()
        server_channel.sock.close()

    def test_a_peer_without_the_secret_is_refused(self) -> None:
        listener = Listener()
        with pytest.raises(LinkError, match="authentication"):
            dial(listener.address, "127.0.0.1:7000", "127.0.0.1:7001", peer_secret("other"), 5.0)
        with pytest.raises((LinkError, OSError, wire.ProtocolError)):
            listener.server()
        listener.dispose()

    def test_a_peer_that_is_not_who_we_dialled_is_refused(self) -> None:
        listener = Listener(own_id="127.0.0.1:7999")
        with pytest.raises(LinkError, match="says it is"):
            dial(listener.address, "127.0.0.1:7000", "127.0.0.1:7001", SECRET, 5.0)
        listener.dispose()

    def test_a_refused_peer_id_hears_why(self) -> None:
        listener = Listener(refuse="peer id 10.0.0.9:1 claimed from 10.0.0.8")
        with pytest.raises(LinkError, match=r"refused us: peer id 10\.0\.0\.9:1 claimed"):
            dial(listener.address, "127.0.0.1:7000", "10.0.0.9:1", SECRET, 5.0)
        listener.dispose()

    def test_nothing_listening(self) -> None:
        port = socket.create_server(("127.0.0.1", 0))
        address = f"127.0.0.1:{port.getsockname()[1]}"
        port.close()
        with pytest.raises(LinkError, match="cannot connect"):
            dial(address, "x", "127.0.0.1:7001", SECRET, 2.0)


class TestTlsHandshake:
    """TLS 1.3 with node certificates: each side learns who the other is, the dialler checks it
    reached the node it meant to, and nobody without a certificate of our CA gets a link."""

    def test_both_sides_learn_the_others_identity(self, tmp_path: Path) -> None:
        ca = TestCA.create()
        server = TlsDirectory(ca.issue(tmp_path / "a", "node-a", ips=("127.0.0.1",)))
        client = TlsDirectory(ca.issue(tmp_path / "b", "node-b", ips=("127.0.0.1", "10.0.0.2")))
        listener = Listener(tls=server.server_context())
        channel, _conn = dial(
            listener.address, "127.0.0.1:7000", "127.0.0.1:7001", SECRET, 5.0, tls=client.client_context()
        )
        server_channel, server_conn = listener.server()
        assert channel.encrypted
        assert channel.identity is not None
        assert channel.identity.name == "node-a"
        (seen,) = listener.identities
        assert seen is not None
        assert (seen.name, seen.ips) == ("node-b", ("127.0.0.1", "10.0.0.2"))
        assert server_conn.peer_id == "127.0.0.1:7001"
        channel.sock.close()
        server_channel.sock.close()

    def test_a_node_that_is_not_the_one_dialled_is_refused(self, tmp_path: Path) -> None:
        ca = TestCA.create()
        elsewhere = TlsDirectory(ca.issue(tmp_path / "a", "node-x", ips=("10.0.0.9",)))
        client = TlsDirectory(ca.issue(tmp_path / "b", "node-b", ips=("127.0.0.1",)))
        listener = Listener(tls=elsewhere.server_context())
        with pytest.raises(LinkError, match=r"not the node we dialled: its certificate is for node-x \(10\.0\.0\.9\)"):
            dial(listener.address, "127.0.0.1:7000", "127.0.0.1:7001", SECRET, 5.0, tls=client.client_context())
        listener.dispose()

    @pytest.mark.parametrize("client_kind", ["another CA", "no certificate"])
    def test_a_client_without_a_certificate_of_our_ca_is_refused(self, tmp_path: Path, client_kind: str) -> None:
        """The client hears OpenSSL's alert (why), not just a closed connection."""
        server = TlsDirectory(TestCA.create().issue(tmp_path / "a", "node-a", ips=("127.0.0.1",)))
        if client_kind == "another CA":  # it trusts ours, so it goes on to present its own
            other = TestCA.create("another CA").issue(tmp_path / "b", "node-b", ips=("127.0.0.1",))
            context = TlsDirectory(other).client_context()
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
        context.load_verify_locations(cafile=tmp_path / "a" / "ca.pem")
        listener = Listener(tls=server.server_context())
        with pytest.raises(LinkError, match="ALERT"):
            dial(listener.address, "127.0.0.1:7000", "127.0.0.1:7001", SECRET, 5.0, tls=context)
        with pytest.raises(LinkError, match="TLS handshake failed"):
            listener.server()
        listener.dispose()


@pytest.fixture(params=["clear", "tls"])
def wire_tls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext] | None:
    """(server, client) TLS contexts of two nodes on 127.0.0.1, or None for the clear wire."""
    if request.param == "clear":
        return None
    ca = TestCA.create()
    server = TlsDirectory(ca.issue(tmp_path / "tls-server", "node-a", ips=("127.0.0.1",)))
    client = TlsDirectory(ca.issue(tmp_path / "tls-client", "node-b", ips=("127.0.0.1",)))
    return server.server_context(), client.client_context()


async def linked(
    tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = None, buffers: PieceBuffers | None = None
) -> tuple[PeerLink, Recorder, PeerLink, Recorder]:
    """A client link (reading bodies into ``buffers``) and a server link joined over
    loopback, both started."""
    listener = Listener(tls=None if tls is None else tls[0])
    client_channel, client_conn = await asyncio.to_thread(
        dial,
        listener.address,
        "127.0.0.1:7000",
        "127.0.0.1:7001",
        SECRET,
        5.0,
        None,
        None if tls is None else tls[1],
    )
    server_channel, server_conn = await asyncio.to_thread(listener.server)
    loop = asyncio.get_running_loop()
    client, server = Recorder(), Recorder()
    a = PeerLink(client_channel, client_conn, loop, client, outbound=True, buffers=buffers)
    b = PeerLink(server_channel, server_conn, loop, server, outbound=False)
    a.start()
    b.start()
    return a, client, b, server


class TestLink:
    async def test_a_piece_goes_out_and_arrives_hashed(
        self, tmp_path: Path, wire_tls: tuple[ssl.SSLContext, ssl.SSLContext] | None
    ) -> None:
        blob = tmp_path / "blob"
        data = os.urandom(3 << 20)
        blob.write_bytes(data)
        a, client, b, server = await linked(wire_tls)
        a.watch_bytes(DIGEST)
        a.send(wire.Interested(DIGEST, 2))
        await server.until(lambda: server.events)
        assert server.events == [wire.Interested(DIGEST, 2)]
        b.send(wire.Bitfield.of(DIGEST, 2, [1]))
        a.send(wire.Request(DIGEST, 1))
        await server.until(lambda: len(server.events) == 2)
        b.send_piece(DIGEST, 1, lambda: blob, 2 << 20, 1 << 20)
        await client.until(lambda: client.pieces)
        (piece,) = client.pieces
        assert (piece.digest, piece.index) == (DIGEST, 1)
        assert bytes(piece.data) == data[2 << 20 :]
        assert piece.sha256 == hashlib.sha256(data[2 << 20 :]).hexdigest()
        assert a.bytes_in(DIGEST) == 1 << 20
        await server.until(lambda: server.sent)
        assert server.sent == [(DIGEST, 1, 1 << 20)]
        # counted in the writer thread: a piece sent wakes the event loop no more
        assert server.sent_in[0] != threading.get_ident()
        a.close("done")
        await server.until(lambda: server.closed)
        await client.until(lambda: client.closed)
        assert "done" in server.closed[0]

    async def test_bytes_received_count_for_their_own_blob_only(self, tmp_path: Path) -> None:
        """A download's stall rule reads the bytes its parent sent of *its* blob: another
        layer's pieces on the same link are not its progress."""
        blob = tmp_path / "blob"
        blob.write_bytes(os.urandom(2 << 20))
        other = "sha256:" + "cd" * 32
        a, client, b, server = await linked(None)
        for digest in (DIGEST, other):
            a.watch_bytes(digest)
            a.send(wire.Interested(digest, 2))
        await server.until(lambda: len(server.events) == 2)
        for digest in (DIGEST, other):
            b.send(wire.Bitfield.of(digest, 2, [0, 1]))
        a.send(wire.Request(other, 0))
        a.send(wire.Request(other, 1))
        await server.until(lambda: len(server.events) == 4)
        b.send_piece(other, 0, lambda: blob, 0, 1 << 20)
        b.send_piece(other, 1, lambda: blob, 1 << 20, 1 << 20)
        await client.until(lambda: len(client.pieces) == 2)
        assert a.bytes_in(other) == 2 << 20
        assert a.bytes_in(DIGEST) == 0
        a.forget_bytes(other)
        assert a.bytes_in(other) == 0
        a.close("done")
        await client.until(lambda: client.closed)

    async def test_a_forgotten_blobs_late_bytes_are_not_remembered(self, tmp_path: Path) -> None:
        """A body on its way when its download let the parent go (or finished) must not
        leave a count behind: a link lives across many blobs, and nothing forgets it again."""
        blob = tmp_path / "blob"
        blob.write_bytes(os.urandom(1 << 20))
        a, client, b, server = await linked(None)
        a.watch_bytes(DIGEST)
        a.send(wire.Interested(DIGEST, 1))
        await server.until(lambda: server.events)
        b.send(wire.Bitfield.of(DIGEST, 1, [0]))
        a.send(wire.Request(DIGEST, 0))
        await server.until(lambda: len(server.events) == 2)
        a.forget_bytes(DIGEST)  # the download let this parent go; its piece is still coming
        b.send_piece(DIGEST, 0, lambda: blob, 0, 1 << 20)
        await client.until(lambda: client.pieces)
        assert a.bytes_in(DIGEST) == 0
        a.close("done")
        await client.until(lambda: client.closed)

    async def test_a_body_fills_a_buffer_given_back_with_another_pieces_bytes(
        self, tmp_path: Path, wire_tls: tuple[ssl.SSLContext, ssl.SSLContext] | None
    ) -> None:
        blob = tmp_path / "blob"
        data = os.urandom(2 << 20)
        blob.write_bytes(data)
        buffers = PieceBuffers()
        a, client, b, server = await linked(wire_tls, buffers)
        a.send(wire.Interested(DIGEST, 2))
        a.send(wire.Request(DIGEST, 0))
        a.send(wire.Request(DIGEST, 1))
        await server.until(lambda: len(server.events) == 3)
        b.send_piece(DIGEST, 0, lambda: blob, 0, 1 << 20)
        await client.until(lambda: client.pieces)
        first = client.pieces[0].data
        client.pieces[0].release()
        b.send_piece(DIGEST, 1, lambda: blob, 1 << 20, 1 << 20)
        await client.until(lambda: len(client.pieces) == 2)
        second = client.pieces[1]
        assert second.data is first  # the same buffer, its old bytes all overwritten
        assert bytes(second.data) == data[1 << 20 :]
        assert second.sha256 == hashlib.sha256(data[1 << 20 :]).hexdigest()
        assert buffers.reused == 1
        a.close("done")
        await client.until(lambda: client.closed)

    async def test_a_cancelled_piece_is_not_sent(
        self, tmp_path: Path, wire_tls: tuple[ssl.SSLContext, ssl.SSLContext] | None
    ) -> None:
        blob = tmp_path / "blob"
        blob.write_bytes(b"x" * 100)
        a, client, b, server = await linked(wire_tls)
        a.send(wire.Interested(DIGEST, 1))
        a.send(wire.Request(DIGEST, 0))
        a.send(wire.Cancel(DIGEST, 0))
        await server.until(lambda: len(server.events) == 3)
        b.send_piece(DIGEST, 0, lambda: blob, 0, 100)
        b.send(wire.KeepAlive())  # not due: dropped, the link lives on
        b.send(wire.Bitfield.of(DIGEST, 1, [0]))
        await client.until(lambda: client.events)
        await server.until(lambda: server.dropped)  # control frames go out before a queued piece
        assert client.events == [wire.Bitfield.of(DIGEST, 1, [0])]
        assert not client.pieces
        assert not server.sent
        assert server.dropped == [(DIGEST, 0, False)]
        a.close("done")
        await client.until(lambda: client.closed)

    async def test_frames_sent_with_the_handshake_are_not_stranded(self) -> None:
        """A client's first frame often shares a TCP segment with its AUTH: the server's
        handshake reads both, and the link must hand the buffered frame on before waiting
        for more (it used to wait for the next segment, which never came)."""
        listener = socket.create_server(("127.0.0.1", 0))
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        client = wire.Connection(wire.Role.CLIENT, secret=SECRET)
        raw = socket.create_connection(("127.0.0.1", int(address.rpartition(":")[2])))
        server_sock, _ = listener.accept()
        listener.close()
        raw.sendall(client.send(wire.Hello("127.0.0.1:7001")))
        first = server_sock.recv(1)
        done: list[wire.Connection] = []
        thread = threading.Thread(
            target=lambda: done.append(
                answer(server_sock, first, "127.0.0.1:7000", SECRET, wire.NonceLog(), lambda _, __: None)[1]
            )
        )
        thread.start()
        while (event := client.next_event()) is wire.NEED_DATA:
            client.receive_data(raw.recv(4096))
        assert isinstance(event, wire.Welcome)
        raw.sendall(client.send(wire.Auth()) + client.send(wire.Interested(DIGEST, 3)))
        thread.join(5)
        recorder = Recorder()
        link = PeerLink(PlainChannel(server_sock), done[0], asyncio.get_running_loop(), recorder, outbound=False)
        link.start()
        await recorder.until(lambda: recorder.events)
        assert recorder.events == [wire.Interested(DIGEST, 3)]
        link.abort()
        raw.close()
        await recorder.until(lambda: recorder.closed)

    async def test_a_peer_breaking_the_protocol_is_cut_off(self) -> None:
        a, client, b, server = await linked()
        b.send(wire.Bitfield.of(DIGEST, 1, [0]))  # never asked: dropped by our own state (a local error)
        a.send(wire.Interested(DIGEST, 1))
        await server.until(lambda: server.events)
        # the peer sends a frame the protocol forbids: a PIECE nobody asked for, raw
        b._sock.sendall(b"\x00\x00\x00\x2a\x21\x01" + b"\xab" * 32 + b"\x00\x00\x00\x00\x00\x00\x00\x01x")
        await client.until(lambda: client.closed)
        assert "protocol error" in client.closed[0]
        await server.until(lambda: server.closed)


class TestEarlyEnd:
    """Found in the N=40 TLS fleet: a reader that ended before its writer had started
    raised ``cannot join thread before it is started`` and never closed the socket."""

    async def test_a_link_whose_peer_is_gone_before_the_writer_starts(self) -> None:
        listener = Listener()
        channel, conn = await asyncio.to_thread(
            dial, listener.address, "127.0.0.1:7000", "127.0.0.1:7001", SECRET, 5.0, None, None
        )
        server_channel, _ = await asyncio.to_thread(listener.server)
        server_channel.sock.close()  # the peer goes away at once
        recorder = Recorder()
        link = PeerLink(channel, conn, asyncio.get_running_loop(), recorder, outbound=True)
        link._reader.start()  # the reader alone: it meets the end before the writer runs
        await recorder.until(lambda: recorder.closed)
        link._reader.join(5)
        assert not link._reader.is_alive()
        link._writer.start()  # the writer then finds the stop and the last one out closes
        link._writer.join(5)
        assert link._sock.fileno() == -1


class TestExhaustion:
    """A peer cannot hold this agent's threads or memory: found by review, each test failed
    on the code before its fix."""

    def test_a_trickled_handshake_ends_at_its_deadline(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import time

        from shoal.agent import peer_link

        monkeypatch.setattr(peer_link, "HANDSHAKE_TIMEOUT", 1.0)
        listener = socket.create_server(("127.0.0.1", 0))
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
        listener.close()
        stop = threading.Event()

        def trickle() -> None:
            a.sendall(b"\x00\x00\xff\xff\x01")  # a HELLO of 64 KiB, announced
            while not stop.wait(0.3):
                with contextlib.suppress(OSError):
                    a.sendall(b"x")

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        started = time.monotonic()
        with pytest.raises((LinkError, TimeoutError)):
            answer(b, b.recv(1), "127.0.0.1:7000", SECRET, wire.NonceLog(), lambda _, __: None)
        assert time.monotonic() - started < 2.0
        stop.set()
        thread.join(2)
        a.close()
        b.close()

    async def test_a_peer_that_does_not_read_loses_its_link(self) -> None:
        from shoal.agent import peer_link

        a, client, b, server = await linked()
        a._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # the client end stops reading: its reader thread is parked on a lock we hold
        with a._lock:
            # the kernel's buffers take a few MiB before the writer blocks: queue well past the bound
            for _ in range(4 * (peer_link.MAX_QUEUED_BYTES // (64 << 10))):
                b.send(wire.Bitfield.of(DIGEST, 8 * ((64 << 10) - 80), ()))
                if b.closed:
                    break
            assert b.closed
        await server.until(lambda: server.closed)
        a.abort()
        await client.until(lambda: client.closed)
