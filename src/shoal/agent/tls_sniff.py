"""Which application a TLS client asks for, read from its ClientHello before any handshake.

The agent's one port carries three things: the runtime's plain HTTP, the peer wire (TLS
without ALPN) and node-to-node HTTP over TLS (ALPN ``http/1.1``). The accept loop tells the
two TLS ones apart by the ALPN extension of the first flight, parsed here without I/O
(RFC 8446 section 4.1.2, RFC 7301).
"""

from __future__ import annotations

__all__ = ["MAX_HELLO", "NotAClientHello", "offered_alpn"]

MAX_HELLO = 1 << 15
"""bytes read, at most, before a ClientHello must be complete (real ones are well below 2 KiB)"""

_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_ALPN = 16


class NotAClientHello(ValueError):
    """The bytes are not the start of a TLS ClientHello."""


def _handshake_bytes(data: bytes) -> tuple[bytes, bool]:
    """The handshake records' payload joined, and whether the last record was whole."""
    out = bytearray()
    at = 0
    while at < len(data):
        if data[at] != _HANDSHAKE:
            raise NotAClientHello("a record that is not a handshake")
        if at + 5 > len(data):
            return bytes(out), False
        length = int.from_bytes(data[at + 3 : at + 5])
        if at + 5 + length > len(data):
            return bytes(out), False
        out += data[at + 5 : at + 5 + length]
        at += 5 + length
    return bytes(out), True


class _Reader:
    __slots__ = ("at", "data")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise NotAClientHello("a field runs past the end of the ClientHello")
        out = self.data[self.at : self.at + n]
        self.at += n
        return out

    def number(self, n: int) -> int:
        return int.from_bytes(self.take(n))

    def vector(self, length_bytes: int) -> bytes:
        return self.take(self.number(length_bytes))


def offered_alpn(data: bytes) -> tuple[str, ...] | None:
    """The protocols the ClientHello at the start of ``data`` offers (``()``: no ALPN);
    None while more bytes are needed. Raises ``NotAClientHello``."""
    if not data:
        return None
    handshake, _ = _handshake_bytes(data)
    if len(handshake) < 4:
        return None
    if handshake[0] != _CLIENT_HELLO:
        raise NotAClientHello("the first handshake message is not a ClientHello")
    length = int.from_bytes(handshake[1:4])
    if len(handshake) < 4 + length:
        return None
    hello = _Reader(handshake[4 : 4 + length])
    hello.take(2 + 32)  # legacy_version, random
    hello.vector(1)  # legacy_session_id
    hello.vector(2)  # cipher_suites
    hello.vector(1)  # legacy_compression_methods
    if hello.at == len(hello.data):
        return ()
    extensions = _Reader(hello.vector(2))
    while extensions.at < len(extensions.data):
        kind = extensions.number(2)
        body = extensions.vector(2)
        if kind == _ALPN:
            names = _Reader(_Reader(body).vector(2))
            offered = []
            while names.at < len(names.data):
                offered.append(names.vector(1).decode("ascii", errors="replace"))
            return tuple(offered)
    return ()
