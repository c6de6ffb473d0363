"""One peer connection's I/O: a blocking socket, a reader thread and a writer thread around the
sans-I/O :class:`shoal.p2p.wire.Connection`.

Bulk bytes never touch the event loop. The writer sends a piece straight from the blob's file
(``os.sendfile`` in clear; under TLS through one reusable buffer, see :mod:`.peer_channel`);
the reader takes a piece body into a buffer of the piece's size (``recv_into``) and hashes it
in its own thread (``hashlib`` releases the GIL). The
loop hears of a connection once per batch of control frames and once per whole piece, through
``call_soon_threadsafe``: per piece, Python does a constant amount of work, whatever its size.

The protocol state is shared by the two threads (the reader feeds it, the writer encodes with
it), so every call into it holds the link's lock; bulk I/O happens outside the lock.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import os
import queue
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from shoal.agent.peer_channel import PlainChannel, TlsChannel, TlsHandshakeError, tls_handshake
from shoal.agent.piece_buffers import PieceBuffers
from shoal.p2p import wire
from shoal.p2p.tls import PeerIdentity

log = logging.getLogger(__name__)

RECV_BUFFER = 256 << 10
"""bytes asked of the socket per read of control frames (a piece body is read apart)"""
BODY_SLICE = 1 << 20
"""a piece body is read in slices of this size: ``bytes_in`` (stall detection) moves that often"""
HANDSHAKE_TIMEOUT = 10.0
"""seconds a whole handshake may take (not each read: a peer trickling a byte at a time
would hold a thread for ever)"""
SEND_TIMEOUT = 60.0
"""seconds one send may block (SO_SNDTIMEO): a peer that stops reading loses its link"""
MAX_QUEUED_BYTES = 8 << 20
"""control frames queued for a peer that does not read them, at most; then its link closes"""
MAX_QUEUED_PIECES = wire.MAX_REQUESTS
"""pieces waiting for the writer on one link, at most (the hub refuses requests beyond)"""
_OPEN_ATTEMPTS = 3
"""opens of a queued piece's file: a download's file is renamed into the cache between the
rename and the new path being set, for a moment neither name is what ``file`` says"""


class LinkError(Exception):
    """The peer could not be reached, failed the handshake, or is not who we dialled."""


@dataclass(slots=True, eq=False)
class PieceBody:
    """A whole piece received, hashed in the reader thread."""

    digest: str
    index: int
    data: bytearray
    sha256: str
    pool: PieceBuffers | None = None
    """where :meth:`release` gives the buffer back (None: nowhere, or already given)"""

    def release(self) -> None:
        """The bytes are on file or dropped: the buffer may carry another piece. Once only
        (later calls do nothing), by the body's one owner; ``data`` is empty from then on, so
        a late reader finds no bytes rather than another piece's."""
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.give(self.data)
            self.data = bytearray()


class LinkHandler(Protocol):
    """What a link tells its owner, on the event loop, but for ``link_piece_sent``: that one
    is called in the link's writer thread, and must be thread-safe (a count). It needs no
    decision of the loop, and each call posted to the loop wakes it: about one a MiB."""

    def link_events(self, link: PeerLink, events: list[wire.Event]) -> None: ...

    def link_piece(self, link: PeerLink, piece: PieceBody) -> None: ...

    def link_piece_sent(self, link: PeerLink, digest: str, index: int, length: int) -> None: ...

    def link_piece_dropped(self, link: PeerLink, digest: str, index: int, aborted: bool) -> None:
        """A queued piece did not go out: cancelled before its turn, or broken off mid-body."""

    def link_closed(self, link: PeerLink, reason: str) -> None: ...


PieceFile = Callable[[], Path]
"""Where a queued piece's blob is when the writer gets to it (a download's file is renamed
into the cache when it completes)"""


@dataclass(frozen=True, slots=True)
class _PieceOut:
    digest: str
    index: int
    file: PieceFile
    offset: int
    length: int


class _Stop:
    """End of the outgoing stream."""


class _PieceReady:
    """A piece was queued (the writer takes pieces from their own queue)."""


_STOP = _Stop()
_PIECE_READY = _PieceReady()
_Item = wire.Event | _PieceReady | _Stop


def _open_piece(item: _PieceOut) -> int | None:
    for attempt in range(_OPEN_ATTEMPTS):
        try:
            return os.open(item.file(), os.O_RDONLY)
        except OSError:
            time.sleep(0.001 * attempt)
    return None


def _frame_size(event: object) -> int:
    """About how many bytes an event takes on the wire (a BITFIELD's bits, else a header)."""
    return 80 + len(event.bits) if isinstance(event, wire.Bitfield) else 80


def peer_secret(token: str | None) -> bytes:
    """The wire protocol's secret: derived from the peer token (any length), or a fixed,
    public value under ``--insecure-no-peer-auth`` (which then authenticates nobody)."""
    material = b"shoal peer secret\0" + (token.encode() if token is not None else b"")
    return hashlib.sha256(material).digest()


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise LinkError(f"peer address {address!r} is not host:port")
    return host.strip("[]"), int(port)


Channel = PlainChannel | TlsChannel


def _send_all(channel: Channel, conn: wire.Connection, lock: threading.Lock, event: wire.Event) -> None:
    with lock:
        data = conn.send(event)
    channel.sendall(data)


def _read_event(channel: Channel, conn: wire.Connection, deadline: float) -> wire.Event:
    """The next handshake event (blocking, until ``deadline`` on the monotonic clock)."""
    while True:
        event = conn.next_event()
        if event is wire.NEED_DATA:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LinkError("handshake not complete in time")
            channel.sock.settimeout(remaining)
            conn.receive_data(channel.recv(4096))
            continue
        if isinstance(event, wire.Signal):
            raise wire.RemoteProtocolError("piece body during the handshake")
        return event


def _connect(host: str, port: int, timeout: float, source: str | None) -> socket.socket:
    if source is not None:
        with contextlib.suppress(OSError):  # not an address of ours here: any will do
            return socket.create_connection((host, port), timeout=timeout, source_address=(source, 0))
    return socket.create_connection((host, port), timeout=timeout)


def not_the_node_dialled(identity: PeerIdentity | None, host: str) -> str | None:
    """Why the certificate the dialled peer presented is not that of ``host`` (or None)."""
    if identity is None:
        return "no certificate"
    if not identity.has_ip(host):
        return f"its certificate is for {identity.name} ({', '.join(identity.ips) or 'no IP'}), not {host}"
    return None


def dial(
    address: str,
    expected_id: str,
    own_id: str,
    secret: bytes,
    timeout: float,
    source: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> tuple[Channel, wire.Connection]:
    """Connect (from our own address ``source``, when given, so the peer sees the address our
    id names), run TLS when given a context (the peer's certificate must name the host we
    dialled) and authenticate as the client (blocking: run in a thread)."""
    host, port = split_address(address)
    try:
        sock = _connect(host, port, timeout, source)
    except OSError as exc:
        raise LinkError(f"cannot connect to {address}: {exc}") from None
    try:
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT
        sock.settimeout(HANDSHAKE_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        channel: Channel = PlainChannel(sock)
        if tls is not None:
            channel = tls_handshake(sock, tls, server=False, first=b"", deadline=deadline)
            wrong = not_the_node_dialled(channel.identity, host)
            if wrong is not None:
                raise LinkError(f"{address} is not the node we dialled: {wrong}")
        conn = wire.Connection(wire.Role.CLIENT, secret=secret)
        lock = threading.Lock()
        _send_all(channel, conn, lock, wire.Hello(own_id))
        event = _read_event(channel, conn, deadline)
        if isinstance(event, wire.Close):
            raise LinkError(f"{address} refused us: {event.reason}")
        if not isinstance(event, wire.Welcome):
            raise LinkError(f"{address} answered {type(event).__name__} to HELLO")
        if event.peer_id != expected_id:
            raise LinkError(f"{address} says it is {event.peer_id!r}, not {expected_id!r}")
        _send_all(channel, conn, lock, wire.Auth())
        _bulk_mode(sock)
        return channel, conn
    except (OSError, wire.ProtocolError, LinkError, TlsHandshakeError) as exc:
        sock.close()
        if isinstance(exc, LinkError):
            raise
        raise LinkError(f"handshake with {address} failed: {exc}") from None
    except BaseException:
        sock.close()
        raise


def answer(
    sock: socket.socket,
    first: bytes,
    own_id: str,
    secret: bytes,
    replay_guard: wire.NonceLog,
    check_id: Callable[[str, PeerIdentity | None], str | None],
    timeout: float | None = None,
    tls: ssl.SSLContext | None = None,
) -> tuple[Channel, wire.Connection]:
    """Authenticate a connecting peer as the server (blocking: run in a thread).

    ``first`` is what was read off the socket before it was recognised as a peer connection;
    with ``tls`` it is the start of the TLS handshake. ``check_id`` says why a claimed peer
    id is refused (or None), given the identity its verified certificate names (None
    without TLS). The caller closes ``sock`` on failure.
    """
    timeout = HANDSHAKE_TIMEOUT if timeout is None else timeout
    deadline = time.monotonic() + timeout
    sock.settimeout(timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    channel: Channel = PlainChannel(sock)
    if tls is not None:
        try:
            channel = tls_handshake(sock, tls, server=True, first=first, deadline=deadline)
        except TlsHandshakeError as exc:
            raise LinkError(str(exc)) from None
        first = b""
    conn = wire.Connection(wire.Role.SERVER, secret=secret, replay_guard=replay_guard)
    lock = threading.Lock()
    if first:
        conn.receive_data(first)
    event = _read_event(channel, conn, deadline)
    if not isinstance(event, wire.Hello):
        raise LinkError(f"expected HELLO, got {type(event).__name__}")
    refusal = check_id(event.peer_id, channel.identity)
    if refusal is not None:
        with contextlib.suppress(OSError, wire.ProtocolError):
            _send_all(channel, conn, lock, wire.Close(refusal[:200]))
        raise LinkError(refusal)
    _send_all(channel, conn, lock, wire.Welcome(own_id))
    event = _read_event(channel, conn, deadline)
    if not isinstance(event, wire.Auth):
        raise LinkError(f"expected AUTH, got {type(event).__name__}")
    _bulk_mode(sock)
    return channel, conn


def _bulk_mode(sock: socket.socket) -> None:
    """Blocking reads (a link waits for its peer as long as liveness allows), sends bounded
    by SO_SNDTIMEO: the reader and the writer share the socket, so not ``settimeout``."""
    sock.settimeout(None)
    seconds = int(SEND_TIMEOUT)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, 0))


class PeerLink:
    """An authenticated connection to one peer, shared by every blob either side wants."""

    def __init__(
        self,
        channel: Channel,
        conn: wire.Connection,
        loop: asyncio.AbstractEventLoop,
        handler: LinkHandler,
        *,
        outbound: bool,
        buffers: PieceBuffers | None = None,
    ) -> None:
        """``buffers``: where piece bodies are read into (None: a new buffer each)."""
        assert conn.peer_id is not None
        self.peer_id: str = conn.peer_id
        self.outbound = outbound
        self._bytes_in: dict[str, int] = {}
        """piece body bytes received per watched blob (the reader bumps them under ``_lock``)"""
        self.closed = False
        self.reason = ""
        self._channel = channel
        self._sock = channel.sock
        self.identity = channel.identity
        """who the peer's verified certificate says it is (None without TLS)"""
        self._conn = conn
        self._lock = threading.Lock()
        self._loop = loop
        self._handler = handler
        self._buffers = buffers
        self._out: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        """control frames, in order; the writer sends all that are queued before each piece"""
        self._pieces: collections.deque[_PieceOut] = collections.deque()
        """pieces to send, in order (the loop adds and cancels, the writer takes)"""
        self._pieces_lock = threading.Lock()
        self._queued_bytes = 0
        """about how many bytes of control frames wait in ``_out`` (the loop adds, the writer
        takes away: a lost update under a race only moves the bound a little)"""
        self._ended = 0
        self._end_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read_forever, name=f"peer-in {self.peer_id}", daemon=True)
        self._writer = threading.Thread(target=self._write_forever, name=f"peer-out {self.peer_id}", daemon=True)

    def start(self) -> None:
        self._writer.start()
        self._reader.start()

    # -- from the event loop -------------------------------------------------------------
    def send(self, event: wire.Event) -> None:
        """Queue a control frame (one the protocol no longer allows by then is dropped). A
        peer that lets frames pile up (it stopped reading, and asks for more) is cut off."""
        if self.closed:
            return
        self._queued_bytes += _frame_size(event)
        if self._queued_bytes > MAX_QUEUED_BYTES:
            log.warning("peer %s does not read what it asks for: closing its link", self.peer_id)
            self.abort()
            return
        self._out.put(event)

    def send_piece(self, digest: str, index: int, file: PieceFile, offset: int, length: int) -> None:
        """Queue a piece. No file is held while it waits: the writer opens ``file()`` when
        the piece's turn comes, sends the body and closes it, so a peer that does not read
        holds at most one descriptor here however many pieces it asks for."""
        if self.closed:
            return
        with self._pieces_lock:
            self._pieces.append(_PieceOut(digest, index, file, offset, length))
        self._out.put(_PIECE_READY)

    @property
    def queued_pieces(self) -> int:
        """Pieces waiting for the writer."""
        return len(self._pieces)

    def cancel_piece(self, digest: str, index: int) -> bool:
        """Take a queued piece out of the queue (its request was cancelled); False if it is
        not queued (not yet, or already on its way)."""
        with self._pieces_lock:
            for item in self._pieces:
                if item.digest == digest and item.index == index:
                    self._pieces.remove(item)
                    return True
        return False

    def keepalive(self) -> None:
        with self._lock:
            due = self._conn.keepalive_due()
        if due:
            self.send(wire.KeepAlive())

    def silent_for(self) -> float:
        with self._lock:
            return self._conn.silent_for()

    def close(self, reason: str) -> None:
        """Say why (CLOSE), then end both threads; ``link_closed`` follows."""
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        self._out.put(wire.Close(reason.encode()[: wire.MAX_REASON].decode(errors="ignore")))
        self._out.put(_STOP)

    def abort(self) -> None:
        """Break the connection now (a dead peer)."""
        self.closed = True
        self._shutdown()

    # -- threads ---------------------------------------------------------------------------
    def _post(self, callback: Callable[..., None], *args: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the agent is stopping
            self._loop.call_soon_threadsafe(callback, self, *args)

    def _read_forever(self) -> None:
        reason = "closed by the peer"
        buf = bytearray(RECV_BUFFER)
        view = memoryview(buf)
        try:
            # frames that came with the handshake's last one are buffered in the state already
            if not self._drain():
                return
            while True:
                n = self._channel.recv_into(view)
                with self._lock:
                    self._conn.receive_data(bytes(view[:n]))
                if not self._drain():
                    break
                if n == 0:
                    break
        except wire.RemoteProtocolError as exc:
            reason = f"protocol error: {exc}"
            with contextlib.suppress(wire.ProtocolError):
                self.close(reason)
        except (OSError, wire.LocalProtocolError) as exc:
            reason = f"connection broken: {exc}"
        finally:
            self.closed = True
            self._out.put(_STOP)
            self._post(self._handler.link_closed, self.reason or reason)
            if not self._close_grace():
                self._shutdown()  # a writer blocked on a peer that does not read returns now
            self._end()

    def _drain(self) -> bool:
        """Hand every complete event to the loop; False once the peer closed."""
        events: list[wire.Event] = []
        while True:
            with self._lock:
                event = self._conn.next_event()
            if event is wire.NEED_DATA:
                break
            if isinstance(event, wire.Signal):  # BODY without its PIECE header: cannot happen
                raise wire.LocalProtocolError("piece body outside a piece")
            if isinstance(event, wire.Piece):
                if events:
                    self._post(self._handler.link_events, events)
                    events = []
                self._post(self._handler.link_piece, self._read_body(event))
                continue
            if isinstance(event, wire.Close | wire.ConnectionClosed):
                if events:
                    self._post(self._handler.link_events, events)
                if isinstance(event, wire.Close) and event.reason:
                    self.reason = f"closed by the peer: {event.reason}"
                return False
            events.append(event)
        if events:
            self._post(self._handler.link_events, events)
        return True

    def bytes_in(self, digest: str) -> int:
        """Piece body bytes of ``digest`` received so far: one blob's progress, not the link's."""
        return self._bytes_in.get(digest, 0)

    def watch_bytes(self, digest: str) -> None:
        """Count ``digest``'s body bytes from now on (a download asks on this link)."""
        with self._lock:
            self._bytes_in.setdefault(digest, 0)

    def forget_bytes(self, digest: str) -> None:
        """Stop counting ``digest``'s bytes (its download no longer asks on this link): a body
        still on its way leaves no count behind (the reader counts under the same lock)."""
        with self._lock:
            self._bytes_in.pop(digest, None)

    def _read_body(self, piece: wire.Piece) -> PieceBody:
        """Read a body whole into a buffer (one cut short is an error: the buffer, part old
        bytes, is dropped with it) and hash it."""
        data = bytearray(piece.length) if self._buffers is None else self._buffers.take(piece.length)
        view = memoryview(data)
        counts, digest = self._bytes_in, piece.digest
        with self._lock:
            early = self._conn.take_body()
            if digest in counts:  # watched, and not forgotten meanwhile
                counts[digest] += len(early)
        got = len(early)
        view[:got] = early
        while got < piece.length:
            n = self._channel.recv_exactly(view[got : got + min(BODY_SLICE, piece.length - got)])
            if n == 0:
                raise wire.RemoteProtocolError(f"connection closed inside piece {piece.index}")
            got += n
            with self._lock:
                self._conn.body_received(n)
                if digest in counts:
                    counts[digest] += n
        return PieceBody(piece.digest, piece.index, data, hashlib.sha256(view).hexdigest(), self._buffers)

    def _write_forever(self) -> None:
        """Control frames jump the queue of pieces: a HAVE, a REQUEST or a CANCEL waits for
        at most the piece being sent, never for the pieces queued behind it."""
        try:
            while True:
                items = [] if self._pieces else [self._out.get()]
                with contextlib.suppress(queue.Empty):
                    while len(items) < 256:
                        items.append(self._out.get_nowait())
                if not self._send_control(items):
                    break
                with self._pieces_lock:
                    item = self._pieces.popleft() if self._pieces else None
                if item is not None:
                    self._send_piece(item)
        except OSError as exc:
            log.debug("writing to %s failed: %s", self.peer_id, exc)
        finally:
            self.closed = True  # what the loop queues from now on is dropped at once
            self._drop_queued()
            self._shutdown()
            self._end()

    def _send_control(self, items: list[_Item]) -> bool:
        """Send the control frames among ``items``; False at the end of the stream (a
        ``_PieceReady`` only woke the writer: pieces are taken from their own queue)."""
        pending = bytearray()
        alive = True
        self._queued_bytes -= sum(_frame_size(i) for i in items if not isinstance(i, _Stop | _PieceReady))
        for item in items:
            if isinstance(item, _Stop):
                alive = False
                break
            if isinstance(item, _PieceReady):
                continue
            frame = self._encode(item)
            if frame is not None:
                pending += frame
        if pending:
            self._channel.sendall(pending)
        return alive

    def _send_piece(self, item: _PieceOut) -> None:
        fd = _open_piece(item)
        if fd is None:  # evicted meanwhile: say so rather than leave the request hanging
            reject = self._encode(wire.Reject(item.digest, item.index))
            if reject is not None:
                self._channel.sendall(reject)
            self._post(self._handler.link_piece_dropped, item.digest, item.index, False)
            return
        try:
            header = self._encode(wire.Piece(item.digest, item.index, item.length))
            if header is None:  # cancelled meanwhile
                self._post(self._handler.link_piece_dropped, item.digest, item.index, False)
                return
            self._channel.sendall(header)
            try:
                self._sendfile(fd, item)
            except OSError:
                self._post(self._handler.link_piece_dropped, item.digest, item.index, True)
                raise
        finally:
            os.close(fd)
        try:  # in this thread: see LinkHandler
            self._handler.link_piece_sent(self, item.digest, item.index, item.length)
        except Exception:
            log.exception("counting a piece sent to %s", self.peer_id)

    def _encode(self, event: wire.Event) -> bytes | None:
        with self._lock:
            try:
                return self._conn.send(event)
            except wire.LocalProtocolError as exc:
                # raced a frame of the peer's (a CANCEL, a NOT_INTERESTED) or our own close
                log.debug("not sending %s to %s: %s", type(event).__name__, self.peer_id, exc)
                return None

    def _sendfile(self, fd: int, item: _PieceOut) -> None:
        try:
            self._channel.send_file(fd, item.offset, item.length)
        except OSError as exc:
            raise OSError(f"piece {item.index} of {item.digest[:19]}: {exc}") from None
        with self._lock:
            self._conn.body_sent(item.length)

    def _drop_queued(self) -> None:
        with self._pieces_lock:
            self._pieces.clear()

    def _close_grace(self) -> bool:
        """Give the writer a moment to send our CLOSE; False if it is still busy after it. A
        writer not started yet finds the stop when it starts, and closes the socket itself."""
        if self._writer.ident is None:
            return True
        self._writer.join(1.0)
        return not self._writer.is_alive()

    def _shutdown(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def _end(self) -> None:
        """Both threads are done with the socket: close it."""
        with self._end_lock:
            self._ended += 1
            last = self._ended == 2
        if last:
            self._drop_queued()
            self._sock.close()
