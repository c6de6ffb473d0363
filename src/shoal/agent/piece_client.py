"""Fetching one piece from a parent: a blocking HTTP GET in a worker thread, read straight
into a buffer of the piece's size and hashed there.

Pieces are the swarm's bulk bytes. Streamed through aiohttp, a body reaches Python in chunks
of whatever the socket held (on a shaped link, a few KiB at a time): a callback, a ``bytes``
object and a copy on the event loop for each, then more copies to join them. Measured on a
20-node fleet, that per-chunk work was most of an agent's Python CPU. Here the event loop
sees one call per piece: the worker thread sends the request, reads the body into one
preallocated buffer with ``readinto`` (the GIL is released while it waits and while it
hashes), and hands back the bytes with their sha256.

The small control requests (piece maps, the scheduler) stay on aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from shoal.p2p.protocol import bearer

IDLE_FOR = 30.0
"""seconds an idle keep-alive connection is kept (peers close theirs after 75 s)"""
READ_SLICE = 1 << 20
"""bytes read per ``readinto`` call: progress (for stall detection) moves at least this often"""
ERROR_BODY_LIMIT = 64 << 10


class PieceTransferError(Exception):
    """The parent could not be reached, broke the connection, or sent a malformed answer."""


@dataclass(frozen=True, slots=True)
class PieceReply:
    status: int
    data: bytearray | None = None
    """the body, exactly the piece's length, when ``status`` is 200"""
    sha256: str | None = None


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise PieceTransferError(f"peer address {address!r} is not host:port")
    return host.strip("[]"), int(port)


class _Transfer:
    """One GET in flight; ``abort`` (from any thread) breaks its socket so the worker returns."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.aborted = False

    def detach(self) -> bool:
        """Forget the socket (its connection goes back to the pool); False if aborted."""
        with self._lock:
            self._sock = None
            return not self.aborted

    def attach(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            if self.aborted and sock is not None:
                _shutdown(sock)

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            if self._sock is not None:
                _shutdown(self._sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class PieceClient:
    """Keep-alive connections to parents, and a thread pool to run piece GETs on."""

    def __init__(
        self,
        token: str | None,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        workers: int = 64,
        idle_per_parent: int = 4,
    ) -> None:
        self._headers = bearer(token)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle_per_parent = idle_per_parent
        self._idle: dict[tuple[str, int], list[tuple[float, http.client.HTTPConnection]]] = {}
        self._idle_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shoal-piece")
        self._closed = False

    async def fetch(
        self,
        address: str,
        path: str,
        length: int,
        *,
        timeout: float,
        progress: Callable[[int], None] | None = None,
    ) -> PieceReply:
        """GET ``path`` from the peer at ``address``: a ``length``-byte body and its sha256.

        Raises PieceTransferError or TimeoutError; a cancelled caller aborts the transfer.
        """
        transfer = _Transfer()
        deadline = time.monotonic() + timeout
        future = self._pool.submit(self._get, transfer, split_address(address), path, length, deadline, progress)
        try:
            # the worker checks the deadline between reads; a parent trickling bytes inside
            # one read is cut off here (the abort makes the worker's read return)
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout + 1.0)
        except (asyncio.CancelledError, TimeoutError):
            transfer.abort()
            raise

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._idle_lock:
            for conns in self._idle.values():
                for _, conn in conns:
                    conn.close()
            self._idle.clear()

    # -- worker thread -----------------------------------------------------------------------
    def _get(
        self,
        transfer: _Transfer,
        peer: tuple[str, int],
        path: str,
        length: int,
        deadline: float,
        progress: Callable[[int], None] | None,
    ) -> PieceReply:
        conn, reused = self._checkout(peer)
        try:
            try:
                reply = self._exchange(conn, transfer, path, length, deadline, progress)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                if not reused or transfer.aborted:
                    raise
                # the parent closed an idle keep-alive connection: once more on a new one
                conn.close()
                conn, reused = self._connection(peer), False
                reply = self._exchange(conn, transfer, path, length, deadline, progress)
        except TimeoutError:
            conn.close()
            raise
        except (OSError, http.client.HTTPException, ValueError) as exc:
            conn.close()
            if transfer.aborted:
                raise PieceTransferError("transfer aborted") from None
            raise PieceTransferError(f"{type(exc).__name__}: {exc}") from None
        except BaseException:
            conn.close()
            raise
        if transfer.detach():
            self._checkin(peer, conn)
        else:
            conn.close()
        return reply

    def _exchange(
        self,
        conn: http.client.HTTPConnection,
        transfer: _Transfer,
        path: str,
        length: int,
        deadline: float,
        progress: Callable[[int], None] | None,
    ) -> PieceReply:
        if conn.sock is None:
            conn.connect()
        transfer.attach(conn.sock)
        assert conn.sock is not None
        conn.sock.settimeout(self._read_timeout)
        conn.request("GET", path, headers=self._headers)
        resp = conn.getresponse()
        if resp.status != 200:
            resp.read(ERROR_BODY_LIMIT)
            if not resp.isclosed():
                conn.close()  # an error body longer than we care to read: do not reuse
            return PieceReply(resp.status)
        if resp.length != length:
            raise PieceTransferError(f"answer of {resp.length} bytes, want {length}")
        buf = bytearray(length)
        view = memoryview(buf)
        got = 0
        while got < length:
            if time.monotonic() > deadline:
                raise TimeoutError(f"piece not complete in time ({got} of {length} bytes)")
            n = resp.readinto(view[got : got + READ_SLICE])
            if not n:
                raise PieceTransferError(f"connection closed after {got} of {length} bytes")
            got += n
            if progress is not None:
                progress(n)
        resp.close()
        return PieceReply(200, buf, hashlib.sha256(view).hexdigest())

    def _checkout(self, peer: tuple[str, int]) -> tuple[http.client.HTTPConnection, bool]:
        """An idle keep-alive connection to ``peer`` (reused: True), or a new one."""
        stale: list[http.client.HTTPConnection] = []
        found: http.client.HTTPConnection | None = None
        with self._idle_lock:
            idle = self._idle.get(peer, [])
            while idle and found is None:
                since, conn = idle.pop()
                if time.monotonic() - since > IDLE_FOR:
                    stale.append(conn)
                else:
                    found = conn
            if not idle:
                self._idle.pop(peer, None)
        for conn in stale:
            conn.close()
        if found is not None:
            return found, True
        return self._connection(peer), False

    def _connection(self, peer: tuple[str, int]) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(peer[0], peer[1], timeout=self._connect_timeout)

    def _checkin(self, peer: tuple[str, int], conn: http.client.HTTPConnection) -> None:
        if conn.sock is None or self._closed:
            conn.close()
            return
        with self._idle_lock:
            idle = self._idle.setdefault(peer, [])
            if len(idle) < self._idle_per_parent and not self._closed:
                idle.append((time.monotonic(), conn))
                return
        conn.close()
