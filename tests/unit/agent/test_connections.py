"""ConnectionGuard's rules with a fake clock and fake transports: timeouts, eviction, refusal, quiet logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from shoal.agent.connections import ConnectionGuard, ConnectionLimits, effective_limit
from shoal.demo.pki import TestCA
from shoal.p2p.node_https import NodeHttps
from shoal.p2p.tls import peer_identity


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guard(clock: Clock, max_connections: int = 3) -> tuple[ConnectionGuard, CollectorRegistry]:
    registry = CollectorRegistry()
    gauge = Gauge("conns", "open", registry=registry)
    closed = Counter("closed", "closed", ["reason"], registry=registry)
    limits = ConnectionLimits(max_connections=max_connections, header_timeout=10.0, keepalive_timeout=60.0)
    return ConnectionGuard(limits, gauge, closed, clock=clock, fd_limit=1 << 20), registry


def connect(g: ConnectionGuard) -> tuple[asyncio.Protocol, FakeTransport]:
    proto, transport = asyncio.Protocol(), FakeTransport()
    g.admit(proto, transport)
    return proto, transport


class TestEffectiveLimit:
    """The limit stays below the descriptor limit, with a reserve for the agent's own files."""

    @pytest.mark.parametrize(
        ("configured", "fds", "expected"),
        [(4096, 1 << 20, 4096), (4096, 256, 64), (4096, 1024, 256), (10, 256, 10), (4096, 40, 2), (4096, 33, 1)],
    )
    def test_table(self, configured: int, fds: int, expected: int) -> None:
        assert effective_limit(configured, fds) == expected


class TestTimeouts:
    """A connection without a complete request is closed after header_timeout; one between
    requests after keepalive_timeout; a busy one never."""

    def test_header_timeout_then_keepalive(self) -> None:
        clock = Clock()
        g, registry = guard(clock)
        fresh, fresh_t = connect(g)
        served, served_t = connect(g)
        busy, busy_t = connect(g)
        g.busy(served)
        g.idle(served)  # one request done: now on the keep-alive clock
        g.busy(busy)
        clock.now += 10.5
        assert g.sweep() == 1
        assert fresh_t.aborted
        assert not served_t.aborted
        assert not busy_t.aborted
        clock.now += 60
        assert g.sweep() == 1
        assert served_t.aborted
        assert not busy_t.aborted
        assert len(g) == 1
        assert registry.get_sample_value("closed_total", {"reason": "idle"}) == 2
        del fresh, busy

    def test_unknown_connections_are_ignored(self) -> None:
        g, _ = guard(Clock())
        g.busy(object())
        g.idle(object())
        assert len(g) == 0


class TestLimit:
    """At the limit the longest-idle connection makes room; when all are busy, none can."""

    def test_evicts_the_idlest(self) -> None:
        clock = Clock()
        g, registry = guard(clock, max_connections=2)
        a, a_t = connect(g)
        clock.now += 1
        b, b_t = connect(g)
        g.busy(a)
        g.idle(a)  # a is idle since now: b has been idle longer
        assert g.evict_idlest()
        assert b_t.aborted
        assert not a_t.aborted
        assert registry.get_sample_value("closed_total", {"reason": "evicted"}) == 1
        g.busy(a)
        assert not g.evict_idlest()  # a is busy: nothing to evict
        del b


class TestQuietLogs:
    """Hundreds of closes make one log line per LOG_EVERY seconds, not one each."""

    def test_one_line(self, caplog: pytest.LogCaptureFixture) -> None:
        clock = Clock()
        g, registry = guard(clock, max_connections=1000)
        with caplog.at_level(logging.WARNING, logger="shoal.agent.connections"):
            for _ in range(300):
                connect(g)
            clock.now += 11
            assert g.sweep() == 300
        assert len(caplog.records) == 1
        assert registry.get_sample_value("closed_total", {"reason": "idle"}) == 300


class TestPeerDiversion:
    """One port, two protocols: a connection whose first byte is a peer frame's goes to
    ``divert`` with its socket still open; anything else reaches the HTTP protocol."""

    async def test_first_byte_decides(self) -> None:
        import socket

        from shoal.agent.connections import speaks_peer_protocol

        assert speaks_peer_protocol(b"\x00\x00\x00\x2a\x01")
        assert speaks_peer_protocol(b"\x16\x03\x01\x02\x00")  # a TLS ClientHello
        assert not speaks_peer_protocol(b"GET / HTTP/1.1\r\n")
        g, _ = guard(Clock(), max_connections=8)
        diverted: asyncio.Queue[tuple[socket.socket, bytes]] = asyncio.Queue()
        g.divert = lambda sock, first: diverted.put_nowait((sock, first))
        heard: asyncio.Queue[bytes] = asyncio.Queue()

        class Http(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                heard.put_nowait(data)

        listener = socket.create_server(("127.0.0.1", 0))
        g.serve(listener, Http)
        port = listener.getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"\x00\x00\x00\x05hello")
            sock, first = await asyncio.wait_for(diverted.get(), 5)
            assert first == b"\x00\x00\x00\x05hello"
            await asyncio.to_thread(sock.sendall, b"still open")  # the transport's close left it up
            assert await asyncio.wait_for(reader.readexactly(10), 5) == b"still open"
            sock.close()
            writer.close()
            assert heard.empty()
            _, http = await asyncio.open_connection("127.0.0.1", port)
            http.write(b"GET / HTTP/1.1\r\n\r\n")
            assert await asyncio.wait_for(heard.get(), 5) == b"GET / HTTP/1.1\r\n\r\n"
            assert diverted.empty()
            http.close()
        finally:
            await g.stop()
            listener.close()


def _sock_handshake_in_pieces(port: int, context: ssl.SSLContext, request: bytes) -> bytes:
    """A TLS client that sends its ClientHello in two writes, then ``request``; the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        hello = outgoing.read()
        sock.sendall(hello[:7])
        time.sleep(0.1)
        sock.sendall(hello[7:])
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        tls.write(request)
        sock.sendall(outgoing.read())
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"ok"):
            data = sock.recv(65536)
            if not data:
                break
            incoming.write(data)
            with contextlib.suppress(ssl.SSLWantReadError):
                while True:
                    answer += tls.read(65536)
        return answer


class TestHttpsOnTheSamePort:
    """With ``https``, a ClientHello offering HTTP by ALPN is answered by the same HTTP server
    over TLS (the caller's certificate visible to it); one without ALPN still goes to the peer
    wire; plain HTTP is untouched."""

    async def test_alpn_decides(self, tmp_path: Path) -> None:
        ca = TestCA.create()
        server_tls = NodeHttps(ca.issue(tmp_path / "server", "server", ips=("127.0.0.1",)))
        client_tls = NodeHttps(ca.issue(tmp_path / "client", "node-b", ips=("127.0.0.1",)))
        g, _ = guard(Clock(), max_connections=8)
        diverted: asyncio.Queue[tuple[socket.socket, bytes]] = asyncio.Queue()
        g.divert = lambda sock, first: diverted.put_nowait((sock, first))
        g.https = server_tls.server_context

        async def whoami(request: web.BaseRequest) -> web.Response:
            assert request.transport is not None
            identity = peer_identity(request.transport.get_extra_info("peercert"))
            return web.Response(text=f"{request.scheme} {identity.name if identity else '-'} ok")

        server = web.Server(whoami)
        listener = socket.create_server(("127.0.0.1", 0))
        g.serve(listener, server)
        port = listener.getsockname()[1]
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"https://127.0.0.1:{port}/", ssl=client_tls.client_context()) as resp:
                    assert await resp.text() == "https node-b ok"
                async with session.get(f"http://127.0.0.1:{port}/") as resp:
                    assert await resp.text() == "http - ok"
                anonymous = ssl.create_default_context(cafile=str(tmp_path / "server" / "ca.pem"))
                anonymous.set_alpn_protocols(["http/1.1"])
                async with session.get(f"https://127.0.0.1:{port}/", ssl=anonymous) as resp:
                    assert await resp.text() == "https - ok"
            assert diverted.empty()
            split = await asyncio.to_thread(
                _sock_handshake_in_pieces, port, client_tls.client_context(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            assert split.startswith(b"HTTP/1.1 200"), split
            assert split.endswith(b"https node-b ok"), split
            peer_wire = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            peer_wire.check_hostname = False
            peer_wire.verify_mode = ssl.CERT_NONE
            raw = socket.create_connection(("127.0.0.1", port))
            bio_in, bio_out = ssl.MemoryBIO(), ssl.MemoryBIO()
            with contextlib.suppress(ssl.SSLWantReadError):
                peer_wire.wrap_bio(bio_in, bio_out).do_handshake()
            hello = bio_out.read()
            await asyncio.to_thread(raw.sendall, hello)
            sock, first = await asyncio.wait_for(diverted.get(), 5)
            assert first == hello
            sock.close()
            raw.close()
        finally:
            await g.stop()
            await server.shutdown(1)
            listener.close()
