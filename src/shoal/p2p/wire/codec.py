"""The byte level of wire protocol v2: frame types, bounds, encoders and the frame reader.

Frame format (all integers unsigned, big-endian)::

    frame   = length:u32  type:u8  payload[length - 1]     1 <= length <= max_frame (64 KiB)
    digest  = algorithm:u8 (1 = sha256, 2 = sha512)  raw:32|64 bytes
    id      = n:u8  utf-8[n]                               1 <= n

    0x01 HELLO       version:u8 (2)  nonce:32  id                  client -> server, first
    0x02 WELCOME     version:u8 (2)  nonce:32  proof:32  id        server -> client
    0x03 AUTH        proof:32                                      client -> server
    0x10 INTERESTED  digest  pieces:u32    "tell me what you hold of this blob"
    0x11 NOT_INTERESTED  digest            "stop telling me"
    0x12 BITFIELD    digest  pieces:u32  bits[ceil(pieces / 8)]    answer to INTERESTED, once,
                                                                   with the same piece count
    0x13 HAVE        digest  index:u32     one per piece verified after the BITFIELD
    0x20 REQUEST     digest  index:u32
    0x21 PIECE       digest  index:u32  length:u32, then `length` raw body bytes (not in the frame)
    0x22 CANCEL      digest  index:u32
    0x23 REJECT      digest  index:u32     "I will not send this piece" (do not wait for it)
    0x30 KEEPALIVE   (empty)
    0x31 CLOSE       reason: utf-8, <= 255 bytes

Bitfield bits are most significant first (piece 0 is ``0x80`` of byte 0); spare bits are zero.
INTERESTED carries the blob's piece count (a downloader knows the blob's size from the registry
before it asks), so a peer that holds nothing of the blob yet still answers at once, with an
empty bitfield, and every index after it is checked against that count.
"""

from __future__ import annotations

import enum
import struct

from shoal.core.digest import Digest, DigestError

from .events import LocalProtocolError, ProtocolError, RemoteProtocolError

PROTOCOL_VERSION = 2
MAX_FRAME = 64 << 10
"""Largest frame (type and payload); a bitfield of 500,000 pieces fits."""
MAX_PIECE = 64 << 20
"""Largest piece body accepted (Shoal's pieces are at most 16 MiB)."""
MAX_REQUESTS = 64
"""The peer's requests in flight to us, at most."""
MAX_BLOBS = 4096
"""Blobs a peer may be interested in at once on one connection."""
KEEPALIVE_INTERVAL = 15.0
MIN_SECRET = 16
NONCE_SIZE = 32
MAC_SIZE = 32
MAX_REASON = 255
_HEADER = struct.Struct(">IB")
_U32 = struct.Struct(">I")
_ALGORITHMS = {1: ("sha256", 32), 2: ("sha512", 64)}
_ALGORITHM_CODES = {name: (code, size) for code, (name, size) in _ALGORITHMS.items()}


class _T(enum.IntEnum):
    HELLO = 0x01
    WELCOME = 0x02
    AUTH = 0x03
    INTERESTED = 0x10
    NOT_INTERESTED = 0x11
    BITFIELD = 0x12
    HAVE = 0x13
    REQUEST = 0x20
    PIECE = 0x21
    CANCEL = 0x22
    REJECT = 0x23
    KEEPALIVE = 0x30
    CLOSE = 0x31


# -- encoding ----------------------------------------------------------------------------


def _frame(kind: _T, payload: bytes = b"") -> bytes:
    return _HEADER.pack(len(payload) + 1, kind) + payload


def _digest(text: str) -> bytes:
    try:
        d = Digest.parse(text)
    except DigestError as exc:
        raise LocalProtocolError(str(exc)) from None
    return bytes([_ALGORITHM_CODES[d.algorithm][0]]) + bytes.fromhex(d.hex)


def _short(text: str, what: str) -> bytes:
    raw = text.encode()
    if not 1 <= len(raw) <= 255:
        raise LocalProtocolError(f"{what} must be 1..255 bytes of UTF-8")
    return bytes([len(raw)]) + raw


def _u32(value: int, what: str) -> bytes:
    if not 0 <= value < 1 << 32:
        raise LocalProtocolError(f"{what} {value} outside 0..2**32-1")
    return _U32.pack(value)


def _check_bits(pieces: int, bits: bytes, error: type[ProtocolError]) -> None:
    if pieces < 1 or len(bits) != (pieces + 7) // 8:
        raise error(f"bitfield of {len(bits)} bytes for {pieces} pieces")
    if pieces % 8 and bits[-1] & (0xFF >> (pieces % 8)):
        raise error("bitfield has spare bits set")


class _Reader:
    """Reads one frame's payload; anything malformed is the peer's fault."""

    def __init__(self, kind: _T, payload: bytes) -> None:
        self.kind = kind
        self.data = memoryview(payload)
        self.at = 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise RemoteProtocolError(f"{self.kind.name} frame too short")
        out = bytes(self.data[self.at : self.at + n])
        self.at += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        value: int = _U32.unpack(self.take(4))[0]
        return value

    def digest(self) -> str:
        code = self.u8()
        if code not in _ALGORITHMS:
            raise RemoteProtocolError(f"{self.kind.name}: unknown digest algorithm {code}")
        name, size = _ALGORITHMS[code]
        return f"{name}:{self.take(size).hex()}"

    def text(self, n: int) -> str:
        try:
            return self.take(n).decode()
        except UnicodeDecodeError:
            raise RemoteProtocolError(f"{self.kind.name}: text is not UTF-8") from None

    def short(self) -> str:
        n = self.u8()
        if n == 0:
            raise RemoteProtocolError(f"{self.kind.name}: empty peer id")
        return self.text(n)

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.at)

    def end(self) -> None:
        if self.at != len(self.data):
            raise RemoteProtocolError(f"{self.kind.name} frame has {len(self.data) - self.at} trailing bytes")
