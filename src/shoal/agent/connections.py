"""Connection limits for the agent's port: idle connections can never starve real ones.

The agent's port is reachable from the node and (for peers) from the cluster network. An HTTP
server that waits forever for a request line, and accepts until the process runs out of file
descriptors, is taken down by a few hundred idle sockets. So:

    * a connection has ``header_timeout`` seconds to deliver its first complete request
      (data trickled byte by byte does not extend it), and ``keepalive_timeout`` seconds
      between the end of one response and the next complete request;
    * at most ``max_connections`` are open (never more than the file-descriptor limit allows,
      less a reserve for cache files, upstream and peer sockets); a new connection beyond it
      takes the place of the connection idle the longest, and only when every connection is
      busy with a request is it refused, with a 503 and ``Connection: close``;
    * refusals and closes are counted in metrics and logged at most once every few seconds.

``ConnectionGuard`` runs the accept loop itself, one connection at a time: asyncio's own loop
accepts up to ``backlog`` sockets per wake-up before any of them is counted, and past the
descriptor limit logs a traceback for every failed accept. Whether a connection is busy is
told by the server's middleware (``busy`` / ``idle`` around each request), so the guard needs
nothing from aiohttp's internals.

A connection whose first bytes are a TLS ClientHello is the peer wire, unless the hello offers
HTTP by ALPN (``shoal.agent.tls_sniff``): then, when the guard has ``https``, the same server
answers it over TLS (an ``asyncio`` SSL protocol between the socket and the server's protocol,
fed the hello already read). The runtime's plain HTTP is untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import ssl
import time
from asyncio.sslproto import SSLProtocol
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from prometheus_client import Counter, Gauge

from shoal.agent.tls_sniff import MAX_HELLO, NotAClientHello, offered_alpn
from shoal.core.ratelog import RateLimitedLog
from shoal.p2p.node_https import HTTP_ALPN

log = logging.getLogger(__name__)

FD_RESERVE_FRACTION = 4
"""a quarter of the descriptor limit (at least ``FD_RESERVE_MIN``) stays free for the agent's own files and sockets"""
FD_RESERVE_MIN = 32
FDS_PER_CONNECTION = 3
"""a blob response holds its socket, the blob's file, and for a passthrough an upstream socket"""
_REFUSAL_BODY = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"too many connections to this agent"}]}'
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY)
)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_connections: int = 4096
    header_timeout: float = 10.0
    """seconds a new connection has to send its first complete request"""
    keepalive_timeout: float = 60.0
    """seconds an idle keep-alive connection is kept between requests"""


def descriptor_limit() -> int:
    """The soft RLIMIT_NOFILE, raised to the hard limit first (what servers usually do)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


def effective_limit(configured: int, fd_limit: int) -> int:
    """``configured``, but never so many that the agent runs out of descriptors."""
    reserve = max(FD_RESERVE_MIN, fd_limit // FD_RESERVE_FRACTION)
    return max(1, min(configured, (fd_limit - reserve) // FDS_PER_CONNECTION))


class _Conn:
    __slots__ = ("busy", "idle_since", "inner", "timeout", "transport")

    def __init__(self, inner: asyncio.Protocol, transport: asyncio.Transport, now: float, timeout: float) -> None:
        self.inner = inner
        self.transport = transport
        self.busy = 0
        self.idle_since = now
        self.timeout = timeout


PeerDivert = Callable[[socket.socket, bytes], None]
"""Takes over a connection that speaks the peer protocol: its socket, and the bytes read."""
HttpsContext = Callable[[], ssl.SSLContext]
"""The server context for HTTP over TLS on the agent's port (read for each connection)."""


def starts_tls(first: bytes) -> bool:
    return first[:1] == b"\x16"


def speaks_peer_protocol(first: bytes) -> bool:
    """A peer frame starts with its length's high byte, 0 (frames are at most 64 KiB), a TLS
    peer connection with a handshake record (0x16); an HTTP request starts with a method's
    letter (the mirror itself is plain HTTP: a TLS client there is a peer)."""
    return first[:1] in (b"\0", b"\x16")


class _GuardedProtocol(asyncio.Protocol):
    """Passes everything to the server's protocol; tells the guard when the connection ends.

    The server's protocol sees the connection only once its first bytes show it is HTTP: a
    connection that speaks the peer protocol goes to the guard's ``divert`` instead, and HTTP
    over TLS reaches the server's protocol through an SSL protocol (``self._tls``).
    """

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._made = False
        self._diverted = False
        self._hello = b""
        self._tls: SSLProtocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have every Transport method but are not its subclass
        self._transport = cast(asyncio.Transport, transport)
        self._guard.admit(self._inner, self._transport)
        if self._guard.divert is None and self._guard.https is None:
            self._make()

    def _make(self) -> None:
        self._made = True
        assert self._transport is not None
        self._inner.connection_made(self._transport)

    def data_received(self, data: bytes) -> None:
        if self._diverted:
            return
        if self._tls is not None:
            _feed(self._tls, data)
            return
        if not self._made:
            if self._hello or (self._guard.https is not None and starts_tls(data)):
                self._sniff(data)
                return
            divert = self._guard.divert
            if divert is not None and speaks_peer_protocol(data):
                self._divert(divert, data)
                return
            self._make()
        self._inner.data_received(data)

    def _sniff(self, data: bytes) -> None:
        """Gather the ClientHello; HTTP by ALPN goes to the server over TLS, the rest to the
        peer wire (which refuses what it does not speak)."""
        self._hello += data
        try:
            alpn = offered_alpn(self._hello)
        except NotAClientHello:
            alpn = ()
        if alpn is None and len(self._hello) < MAX_HELLO:
            return
        first, self._hello = self._hello, b""
        https = self._guard.https
        if alpn is not None and HTTP_ALPN in alpn and https is not None:
            self._start_tls(https, first)
        elif self._guard.divert is not None:
            self._divert(self._guard.divert, first)
        else:
            assert self._transport is not None
            self._transport.abort()

    def _start_tls(self, https: HttpsContext, first: bytes) -> None:
        assert self._transport is not None
        try:
            context = https()
        except (ssl.SSLError, OSError, ValueError) as exc:  # the TLS directory is not complete yet
            self._guard.note_refused(f"no TLS for HTTP: {exc}")
            self._transport.abort()
            return
        self._made = True
        self._tls = SSLProtocol(
            asyncio.get_running_loop(),
            self._inner,
            context,
            None,  # type: ignore[arg-type]  # no waiter: the server's protocol is told when it is up
            server_side=True,
            ssl_handshake_timeout=max(1, round(self._guard.limits.header_timeout)),
        )
        self._tls.connection_made(self._transport)
        _feed(self._tls, first)

    def _divert(self, divert: PeerDivert, first: bytes) -> None:
        """Hand the socket over: a duplicate descriptor outlives the transport, which closes
        its own without a shutdown (the connection stays up)."""
        assert self._transport is not None
        self._diverted = True
        self._guard.release(self._inner)
        raw = self._transport.get_extra_info("socket")
        try:
            sock = socket.socket(fileno=os.dup(raw.fileno()))
        except OSError as exc:
            self._guard.note_refused(f"cannot take over a peer connection: {exc}")
            self._transport.abort()
            return
        self._transport.pause_reading()
        self._transport.abort()
        divert(sock, first)

    def eof_received(self) -> bool | None:
        if self._tls is not None:
            self._tls.eof_received()
            return None
        if not self._made:
            return None
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.release(self._inner)
        if self._tls is not None:
            self._tls.connection_lost(exc)
        elif self._made:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._tls is not None:
            self._tls.pause_writing()
        elif self._made:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._tls is not None:
            self._tls.resume_writing()
        elif self._made:
            self._inner.resume_writing()


def _feed(tls: SSLProtocol, data: bytes) -> None:
    """Give bytes read from the socket to the SSL protocol (a buffered protocol)."""
    view = memoryview(data)
    while view:
        buffer = tls.get_buffer(len(view))
        n = min(len(buffer), len(view))
        buffer[:n] = view[:n]
        tls.buffer_updated(n)
        view = view[n:]


class ConnectionGuard:
    """Counts, times out and limits the connections of one listening socket (event loop only)."""

    def __init__(
        self,
        limits: ConnectionLimits,
        open_gauge: Gauge,
        closed: Counter,
        clock: Callable[[], float] = time.monotonic,
        fd_limit: int | None = None,
    ) -> None:
        self.limits = limits
        self.max_connections = effective_limit(limits.max_connections, fd_limit or descriptor_limit())
        self._gauge = open_gauge
        self._closed = closed
        self._clock = clock
        self._conns: dict[asyncio.Protocol, _Conn] = {}
        """oldest first; a connection moves to the end whenever it becomes idle"""
        self._sweeper: asyncio.Task[None] | None = None
        self._accepter: asyncio.Task[None] | None = None
        self._log = RateLimitedLog(log, f"closing connections (limit {self.max_connections})", clock=clock)
        self.divert: PeerDivert | None = None
        """where connections that speak the peer protocol go (None: all are HTTP)"""
        self.https: HttpsContext | None = None
        """the server context for HTTP over TLS (None: TLS clients are the peer wire's)"""

    def serve(self, sock: socket.socket, factory: Callable[[], asyncio.Protocol]) -> None:
        """Accept connections on the listening ``sock`` for ``factory``'s protocol."""
        sock.setblocking(False)
        self._accepter = asyncio.create_task(self._accept_forever(sock, factory), name="accept loop")
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="connection sweeper")

    async def stop(self) -> None:
        for task in (self._accepter, self._sweeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _accept_forever(self, sock: socket.socket, factory: Callable[[], asyncio.Protocol]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:
                # descriptors run out elsewhere, or the kernel refused one connection: never
                # let the accept loop die, give them a moment to come back
                self._note("refused", f"accept failed: {exc.strerror or exc!r}")
                await asyncio.sleep(0.1)
                continue
            if len(self._conns) >= self.max_connections and not self.evict_idlest():
                self._note("refused", f"{len(self._conns)} connections, all busy")
                with contextlib.suppress(OSError):
                    conn.send(REFUSAL)
                conn.close()
                continue
            try:
                await loop.connect_accepted_socket(lambda: _GuardedProtocol(self, factory()), conn)
            except Exception as exc:  # one bad socket must not stop the agent accepting
                conn.close()
                self._note("refused", f"cannot set up a connection: {exc!r}")

    def __len__(self) -> int:
        return len(self._conns)

    # -- events ------------------------------------------------------------------------------
    def admit(self, inner: asyncio.Protocol, transport: asyncio.Transport) -> None:
        self._conns[inner] = _Conn(inner, transport, self._clock(), self.limits.header_timeout)
        self._gauge.set(len(self._conns))

    def release(self, inner: asyncio.Protocol) -> None:
        self._conns.pop(inner, None)
        self._gauge.set(len(self._conns))

    def busy(self, inner: object) -> None:
        """A complete request arrived on this connection (from the server's middleware)."""
        conn = self._conns.get(inner)  # type: ignore[call-overload]
        if conn is not None:
            conn.busy += 1

    def idle(self, inner: object) -> None:
        """A request's handler finished on this connection."""
        conn = self._conns.pop(inner, None)  # type: ignore[call-overload]
        if conn is None:
            return
        conn.busy = max(0, conn.busy - 1)
        conn.idle_since = self._clock()
        conn.timeout = self.limits.keepalive_timeout
        self._conns[inner] = conn  # type: ignore[index]

    # -- policy ------------------------------------------------------------------------------
    def evict_idlest(self) -> bool:
        for conn in self._conns.values():  # oldest idle first
            if not conn.busy:
                self._close(conn, "evicted", "at the connection limit")
                return True
        return False

    def sweep(self) -> int:
        """Close connections idle past their timeout; returns how many."""
        now = self._clock()
        expired = [c for c in self._conns.values() if not c.busy and now - c.idle_since > c.timeout]
        for conn in expired:
            self._close(conn, "idle", f"no complete request within {conn.timeout:.0f}s")
        return len(expired)

    async def _sweep_forever(self) -> None:
        period = max(0.05, min(1.0, self.limits.header_timeout / 4))
        while True:
            await asyncio.sleep(period)
            self.sweep()

    def _close(self, conn: _Conn, reason: str, why: str) -> None:
        self._conns.pop(conn.inner, None)
        self._gauge.set(len(self._conns))
        conn.transport.abort()
        self._note(reason, why)

    def note_refused(self, why: str) -> None:
        self._note("refused", why)

    def _note(self, reason: str, why: str) -> None:
        """Count every close; log a summary at most every few seconds (no log flood)."""
        self._closed.labels(reason).inc()
        self._log.note(why, reason)
