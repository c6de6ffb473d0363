"""The events of wire protocol v2, the roles and states of a connection, and its errors."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field


class ProtocolError(Exception):
    """The conversation broke the protocol; the connection is unusable."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something malformed, out of order, unauthenticated or beyond a bound."""


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol does not allow now."""


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    HANDSHAKE = "handshake"
    ESTABLISHED = "established"
    CLOSED = "closed"


class Signal(enum.Enum):
    NEED_DATA = "need data"
    """Feed more bytes with :meth:`Connection.receive_data`."""
    BODY = "body"
    """The next :attr:`Connection.body_remaining` bytes of the stream are the current piece's body."""


NEED_DATA = Signal.NEED_DATA
BODY = Signal.BODY


# -- events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    peer_id: str


@dataclass(frozen=True, slots=True)
class Welcome:
    peer_id: str


@dataclass(frozen=True, slots=True)
class Auth:
    pass


@dataclass(frozen=True, slots=True)
class Interested:
    digest: str
    pieces: int
    size: int | None = field(default=None, compare=False)
    """Ours only, never on the wire: the blob's size in bytes. Given, every PIECE of it must be
    exactly the length of the piece asked for, checked before its body is read."""


@dataclass(frozen=True, slots=True)
class NotInterested:
    digest: str


@dataclass(frozen=True, slots=True)
class Bitfield:
    """Which of a blob's ``pieces`` the sender holds, as bits (see :mod:`.codec`)."""

    digest: str
    pieces: int
    bits: bytes

    @classmethod
    def of(cls, digest: str, pieces: int, held: Iterable[int]) -> Bitfield:
        bits = bytearray((pieces + 7) // 8)
        for i in held:
            if not 0 <= i < pieces:
                raise ValueError(f"piece {i} outside 0..{pieces - 1}")
            bits[i >> 3] |= 0x80 >> (i & 7)
        return cls(digest, pieces, bytes(bits))

    def has(self, index: int) -> bool:
        return 0 <= index < self.pieces and bool(self.bits[index >> 3] & (0x80 >> (index & 7)))

    def indices(self) -> Iterator[int]:
        return (i for i in range(self.pieces) if self.bits[i >> 3] & (0x80 >> (i & 7)))


@dataclass(frozen=True, slots=True)
class Have:
    digest: str
    index: int


@dataclass(frozen=True, slots=True)
class Request:
    digest: str
    index: int


@dataclass(frozen=True, slots=True)
class Piece:
    """A piece's header; its ``length`` body bytes follow on the stream, outside the frame."""

    digest: str
    index: int
    length: int


@dataclass(frozen=True, slots=True)
class Cancel:
    digest: str
    index: int


@dataclass(frozen=True, slots=True)
class Reject:
    digest: str
    index: int


@dataclass(frozen=True, slots=True)
class KeepAlive:
    pass


@dataclass(frozen=True, slots=True)
class Close:
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed its end cleanly, at a frame boundary."""


Event = (
    Hello
    | Welcome
    | Auth
    | Interested
    | NotInterested
    | Bitfield
    | Have
    | Request
    | Piece
    | Cancel
    | Reject
    | KeepAlive
    | Close
    | ConnectionClosed
)
