"""Blocking HTTP/1.1 in a worker thread: the GET that carries a blob's body from the registry.

aiohttp on the event loop hands a body over a few hundred KiB at a time, each through the
loop, a queue and a thread hop; here a thread of its own reads it with ``readinto`` into
large preallocated buffers, so per buffer Python does a constant amount of work.

Nothing here runs on the event loop: ``run_in_thread`` starts the blocking call in its own
thread (never the default executor, which a few long downloads would fill), and an
``Interrupt`` stops it from the loop by shutting its socket down.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import http.client
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Mapping

from shoal import __version__

NETWORK_ERRORS = (OSError, http.client.HTTPException)
"""what a broken connection raises here (``ssl.SSLError`` and ``TimeoutError`` are OSErrors)"""


class InterruptedTransfer(Exception):
    """The transfer was stopped from the event loop (its task was cancelled)."""


class Interrupt:
    """Stops one worker thread's blocking I/O from another thread: ``fire`` shuts its socket
    down, so a blocked ``connect`` or ``recv`` returns at once, and every later step raises."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._futures: set[concurrent.futures.Future[None]] = set()
        self.fired = False

    def check(self) -> None:
        if self.fired:
            raise InterruptedTransfer("transfer interrupted")

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            if self.fired:
                sock.close()
                raise InterruptedTransfer("transfer interrupted")
            self._socks.add(sock)

    def cancels(self, future: concurrent.futures.Future[None]) -> None:
        """``future`` (something the thread waits for on the loop) is cancelled on ``fire``."""
        with self._lock:
            self._futures = {f for f in self._futures if not f.done()}
            self._futures.add(future)
            if self.fired:
                future.cancel()

    def forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.discard(sock)

    def close(self, sock: socket.socket) -> None:
        """Close a watched socket (under the lock: ``fire`` never hits a reused fd)."""
        with self._lock:
            self._socks.discard(sock)
            sock.close()

    def fire(self) -> None:
        with self._lock:
            self.fired = True
            for future in self._futures:
                future.cancel()
            for sock in self._socks:
                # the plain socket's shutdown even for an SSLSocket: that one's own would
                # drop its TLS state under the thread still reading from it
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)


async def run_in_thread[T](fn: Callable[[], T], interrupt: Interrupt, name: str = "shoal-io") -> T:
    """Run ``fn`` in a new thread. When the caller is cancelled, fire ``interrupt`` and wait
    for the thread to end before raising CancelledError: the caller's state (a partial file,
    a socket) is never touched by a thread still running behind it."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def succeed(result: T) -> None:
        if not done.done():
            done.set_result(result)

    def fail(exc: BaseException) -> None:
        if not done.done():
            done.set_exception(exc)

    def main() -> None:
        settle: Callable[[], None]
        try:
            settle = functools.partial(succeed, fn())
        except BaseException as exc:  # handed to the awaiting task, whatever it is
            settle = functools.partial(fail, exc)
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(settle)

    threading.Thread(target=main, name=name, daemon=True).start()
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        interrupt.fire()
        while not done.done():
            try:
                await asyncio.shield(done)
            except asyncio.CancelledError:
                pass
            except BaseException:
                break
        if not done.cancelled():
            done.exception()  # retrieved: the cancellation is the answer now
        raise


class BlockingResponse:
    """A response whose headers are read; the body is for ``readinto``. Not thread-safe: one
    thread at a time (they may take turns)."""

    def __init__(
        self, url: str, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, interrupt: Interrupt
    ) -> None:
        self.url = url
        self.status = resp.status
        self.headers = resp.headers
        self._conn = conn
        self._resp = resp
        self._interrupt = interrupt
        self.content_length: int | None = None
        if resp.chunked is False and resp.length is not None:
            self.content_length = resp.length

    def readinto(self, buffer: memoryview) -> int:
        """Read what has arrived into ``buffer`` (at least one byte, blocking for it): 0 at
        the end of the body."""
        self._interrupt.check()
        if self.content_length is None:
            data = self._resp.read1(len(buffer))  # chunked: rare for blobs, so a copy is fine
            buffer[: len(data)] = data
            return len(data)
        fp = self._resp.fp
        if fp is None or self._resp.length is None:
            return 0
        n = fp.readinto1(buffer[: self._resp.length])  # bypasses read()'s bookkeeping, so ...
        self._resp.length -= n  # ... keep the remaining length ourselves
        if n == 0 and self._resp.length:
            raise http.client.IncompleteRead(b"", self._resp.length)
        return n

    def read_small(self, limit: int = 64 << 10) -> bytes:
        try:
            return self._resp.read(limit)
        except NETWORK_ERRORS:
            return b""

    def close(self) -> None:
        sock = self._conn.sock
        self._resp.close()
        if sock is not None:
            self._interrupt.close(sock)
        self._conn.close()


class _Connection(http.client.HTTPConnection):
    def __init__(
        self,
        host: str,
        port: int | None,
        *,
        connect_timeout: float,
        read_timeout: float,
        tls: ssl.SSLContext | None,
        interrupt: Interrupt,
    ) -> None:
        super().__init__(host, port, timeout=read_timeout)
        self.default_port = 443 if tls is not None else 80
        if port is None:
            self.port = self.default_port
        self._connect_timeout = connect_timeout
        self._tls = tls
        self._interrupt = interrupt

    def connect(self) -> None:
        err: OSError | None = None
        for family, kind, proto, _, address in socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            self._interrupt.watch(sock)
            try:
                sock.settimeout(self._connect_timeout)
                sock.connect(address)
                break
            except OSError as exc:
                self._interrupt.close(sock)
                self._interrupt.check()
                err = exc
        else:
            raise err or OSError(f"cannot resolve {self.host}")
        sock.settimeout(self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:
            self._interrupt.forget(sock)  # the wrapped socket takes over its fd
            sock = self._tls.wrap_socket(sock, server_hostname=self.host)
            self._interrupt.watch(sock)
        self.sock = sock


USER_AGENT = f"shoal/{__version__}"
"""what the agent tells registries it is (both of its HTTP clients)"""


def request(
    method: str,
    url: str,
    headers: Mapping[str, str],
    *,
    interrupt: Interrupt,
    connect_timeout: float,
    read_timeout: float,
    tls: Callable[[], ssl.SSLContext],
) -> BlockingResponse:
    """Send one request on a new connection and read the response's headers (blocking)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise http.client.InvalidURL(f"cannot fetch {url!r}")
    conn = _Connection(
        parts.hostname,
        parts.port,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        tls=tls() if parts.scheme == "https" else None,
        interrupt=interrupt,
    )
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    try:
        conn.request(method, target, headers={"User-Agent": USER_AGENT, **headers})
        resp = conn.getresponse()
    except BaseException:
        if conn.sock is not None:
            interrupt.close(conn.sock)
        conn.close()
        raise
    return BlockingResponse(url, conn, resp, interrupt)
