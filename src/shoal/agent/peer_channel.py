"""The byte stream under a peer link: plain TCP, or TLS 1.3 over it.

A link has a reader thread and a writer thread on one socket. Plain TCP allows that as is,
and sends piece bodies kernel to kernel with ``os.sendfile``. TLS does not: an OpenSSL
connection must not be used by two threads at once, and there is no kernel TLS here, so the
TLS channel drives an ``ssl.SSLObject`` over memory buffers under one lock that is only ever
held for in-memory work (encrypting, decrypting: both release the GIL), never around a
socket call. Socket reads happen in the reader, socket writes in the writer, outside the
lock; only the writer takes encrypted bytes out, so records leave in the order they were
made. A piece body is encrypted straight from the page cache (the file mapped, in slices)
and comes in decrypted straight into the piece's buffer.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import select
import socket
import ssl
import threading
import time

from shoal.p2p.tls import PeerIdentity, peer_identity

__all__ = ["PlainChannel", "TlsChannel", "TlsHandshakeError", "tls_handshake"]

SEND_SLICE = 256 << 10
"""bytes encrypted per step: the TLS writer's memory, and how long it holds the lock"""
RAW_READ = 256 << 10
"""encrypted bytes taken from the socket per read"""
WAKE_AT = 256 << 10
"""a read that waits for bytes the peer is bound to send asks the kernel to wake it only
once this many (or all it waits for, if fewer) are queued (``SO_RCVLOWAT``)"""
CLOSE_CHECK = 1.0
"""seconds a TLS body read waits for its batch before it decrypts what has come: a peer that
says close_notify mid-body, its connection left open, fails the piece then, not at the
link's liveness bound"""
MAX_RECORD = 5 + (16 << 10) + 256
"""the longest TLS 1.3 record on the wire (RFC 8446 5.2): at most this much ciphertext can sit
inside OpenSSL, read from the memory buffer but not yet decrypted (one partial record)"""


class TlsHandshakeError(Exception):
    """The TLS handshake failed: no certificate, one our CA did not issue, or a broken peer."""


class _Receiver:
    """Reads off a blocking TCP socket, waking the reader once per batch rather than per packet.

    A blocking read wakes its thread each time a segment arrives, even with ``MSG_WAITALL``
    (the kernel copies what is there and sleeps again): on a link shaped to a few MiB/s that
    is hundreds of wake-ups per MiB, most of a receiver's CPU. A read that waits for bytes
    the peer is bound to send sets ``SO_RCVLOWAT`` to what it waits for (at most
    ``WAKE_AT``) and polls: the kernel wakes it once that much is queued (or sooner, when its
    receive window closes), and the read then takes what is there without waiting. Never
    above what is still owed and unread: ``SO_RCVLOWAT`` counts unread bytes, so a mark
    above them would hold the reader until the link's liveness bound. Other reads put it
    back to one byte. Only the link's reader thread reads, so the mark is plain state.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._low = 1
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)  # not POLLPRI: urgent data would spin it

    def _set_low(self, low: int) -> None:
        if low != self._low:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, low)
            self._low = low

    def read_some(self, view: memoryview | bytearray) -> int:
        """What has arrived, at least one byte (0: the peer closed)."""
        self._set_low(1)
        return self.sock.recv_into(view)

    def read_exactly(self, view: memoryview, n: int, patience: float | None = None) -> int:
        """``n`` bytes the peer is bound to send into ``view``: fewer only at its end or,
        given ``patience`` (seconds), when some came but the batch did not within it."""
        got = 0
        timeout = None if patience is None else int(patience * 1000)
        while got < n:
            self._set_low(min(n - got, WAKE_AT))
            impatient = not self._poll.poll(timeout)
            try:
                k = self.sock.recv_into(view[got:n], n - got, socket.MSG_DONTWAIT)
            except BlockingIOError:  # woken with nothing to read (a signal, a spurious wake-up)
                if impatient and got:
                    break
                continue
            if k == 0:
                break
            got += k
            if impatient:
                break
        return got


class PlainChannel:
    """A TCP socket as it is: ``sendfile`` out, ``recv_into`` in."""

    encrypted = False
    identity: PeerIdentity | None = None

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._in = _Receiver(sock)

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        self.sock.sendall(data)

    def recv(self, n: int) -> bytes:
        return self.sock.recv(n)

    def recv_into(self, view: memoryview) -> int:
        return self._in.read_some(view)

    def recv_exactly(self, view: memoryview) -> int:
        """Fill ``view`` (fewer bytes only at the end of the stream)."""
        return self._in.read_exactly(view, len(view))

    def send_file(self, fd: int, offset: int, length: int) -> None:
        sent = 0
        out = self.sock.fileno()
        while sent < length:
            n = os.sendfile(out, fd, offset + sent, length - sent)
            if n == 0:
                raise OSError("the file ended early")
            sent += n


class TlsChannel:
    """TLS 1.3 on a blocking socket, one reader and one writer thread (see the module)."""

    encrypted = True

    def __init__(self, sock: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO):
        self.sock = sock
        self._tls = tls
        self._incoming = incoming
        self._outgoing = outgoing
        self._lock = threading.Lock()
        """held only around SSLObject and BIO calls, never around a socket call"""
        self._raw = bytearray(RAW_READ)  # the reader's
        self._in = _Receiver(sock)
        self._peer_closed = False
        self.identity = peer_identity(tls.getpeercert())

    # -- the writer ------------------------------------------------------------------------
    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        for at in range(0, len(view), SEND_SLICE):
            with self._lock:
                self._tls.write(view[at : at + SEND_SLICE])
                records = self._outgoing.read()
            self.sock.sendall(records)
        if not view:
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            records = self._outgoing.read()
        if records:
            self.sock.sendall(records)

    def send_file(self, fd: int, offset: int, length: int) -> None:
        """Encrypt straight from the page cache: the piece's range of the file mapped (no copy
        into a buffer first; blobs are never truncated, only unlinked, which a mapping survives)."""
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        if os.fstat(fd).st_size < offset + length:
            raise OSError("the file ended early")
        with mmap.mmap(fd, offset + length - start, offset=start, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                self.sendall(view[offset - start :])
            finally:
                view.release()

    # -- the reader ------------------------------------------------------------------------
    def recv(self, n: int) -> bytes:
        out = bytearray(n)
        got = self.recv_into(memoryview(out))
        return bytes(out[:got])

    def recv_into(self, view: memoryview) -> int:
        """Decrypted bytes into ``view``: as many as are here, at least one (0: the peer closed)."""
        while True:
            got = self._decrypt_into(view)
            if got:
                return got
            if got == 0 or not self._fill():
                return 0

    def _decrypt_into(self, view: memoryview) -> int | None:
        """Every whole record already received, into ``view`` (None: none yet; 0: closed)."""
        if self._peer_closed:
            return 0
        got = 0
        with self._lock:
            while got < len(view):
                try:
                    n: int = self._tls.read(len(view) - got, view[got:])  # type: ignore[assignment]  # a count
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    n = 0
                if n == 0:  # close_notify (``read`` answers 0 once it came): nothing follows it
                    self._peer_closed = True
                    return got
                got += n
        return got or None

    def recv_exactly(self, view: memoryview) -> int:
        """Fill ``view`` with bytes the peer is bound to send (a piece body): fewer only at
        the end of the stream.

        Waits in the kernel for as much ciphertext as the plaintext still missing proves is
        coming (``MSG_WAITALL``), as the clear channel does: a plain read returns whatever
        arrived, a few KiB on a shaped link, and each such wake-up costs a trip through
        Python and the lock. The bound never exceeds what the peer must still send: every
        missing plaintext byte needs a ciphertext byte not yet received, except what is
        buffered here already (decrypted, in the memory buffer, or one partial record).
        """
        got = 0
        while got < len(view):
            n = self._decrypt_into(view[got:])
            if n == 0:
                break
            if n is not None:
                got += n
                continue
            with self._lock:
                buffered = self._tls.pending() + self._incoming.pending
            if not self._fill(len(view) - got - buffered - MAX_RECORD):
                break
        return got

    def _fill(self, at_least: int = 0) -> bool:
        """More encrypted bytes from the socket, waiting for ``at_least`` of them (at most
        ``RAW_READ``) when positive, else any; False at its end."""
        if at_least > 0:
            n = self._in.read_exactly(memoryview(self._raw), min(at_least, RAW_READ), CLOSE_CHECK)
        else:
            n = self._in.read_some(self._raw)
        if n == 0:
            return False
        with self._lock:
            self._incoming.write(memoryview(self._raw)[:n])
        return True


def tls_handshake(
    sock: socket.socket, context: ssl.SSLContext, *, server: bool, first: bytes, deadline: float
) -> TlsChannel:
    """Run the TLS handshake on a blocking ``sock`` until ``deadline`` (monotonic seconds).

    ``first``: bytes the server already read off the socket (the start of the ClientHello).
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_side=server)
    if first:
        incoming.write(first)
    try:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            if outgoing.pending:
                sock.sendall(outgoing.read())
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TlsHandshakeError("TLS handshake not complete in time")
            sock.settimeout(remaining)
            data = sock.recv(RAW_READ)
            if not data:
                raise TlsHandshakeError("closed during the TLS handshake")
            incoming.write(data)
        if outgoing.pending:
            sock.sendall(outgoing.read())
    except ssl.SSLError as exc:
        reason = exc.reason or exc.strerror or str(exc)
        if outgoing.pending:  # OpenSSL's alert: the peer learns it was refused, not just cut off
            with contextlib.suppress(OSError):
                sock.sendall(outgoing.read())
        raise TlsHandshakeError(f"TLS handshake failed: {reason}") from None
    except TimeoutError:
        raise TlsHandshakeError("TLS handshake not complete in time") from None
    return TlsChannel(sock, tls, incoming, outgoing)
