"""Peer wire protocol v2, sans-I/O: one persistent connection per pair of peers, all blobs on it.

Planned, not yet used by the agent (issue 10; today's peer API is JSON over HTTP, see
``protocol.py``). This package has no sockets: the I/O layer feeds received bytes to
:meth:`Connection.receive_data`, takes events from :meth:`Connection.next_event` and writes what
:meth:`Connection.send` returns, the h11 way. Piece bodies never pass through it: the codec
says "the next N bytes are piece body" and the I/O layer moves them itself (``sendfile`` out,
``recv_into`` a buffer in), reporting the counts.

The package, one idea a module:

- :mod:`.events`: what :meth:`Connection.next_event` returns and :meth:`Connection.send`
  takes, the roles and states, and the errors;
- :mod:`.codec`: the frame format (documented there in full), its bounds and the byte-level
  encoders and the frame reader;
- :mod:`.handshake`: the handshake's HMAC proof and the server's :class:`NonceLog`;
- :mod:`.connection`: the :class:`Connection` state machine and the rules it enforces.
"""

from __future__ import annotations

# the `X as X` names: importable as before the split, and outside __all__ as before
from .codec import KEEPALIVE_INTERVAL as KEEPALIVE_INTERVAL
from .codec import MAC_SIZE as MAC_SIZE
from .codec import MAX_BLOBS as MAX_BLOBS
from .codec import MAX_FRAME, MAX_PIECE, MAX_REQUESTS, PROTOCOL_VERSION
from .codec import MAX_REASON as MAX_REASON
from .codec import MIN_SECRET as MIN_SECRET
from .codec import NONCE_SIZE as NONCE_SIZE
from .connection import Connection
from .events import (
    BODY,
    NEED_DATA,
    Auth,
    Bitfield,
    Cancel,
    Close,
    ConnectionClosed,
    Event,
    Have,
    Hello,
    Interested,
    KeepAlive,
    LocalProtocolError,
    NotInterested,
    Piece,
    ProtocolError,
    Reject,
    RemoteProtocolError,
    Request,
    Role,
    Signal,
    State,
    Welcome,
)
from .handshake import NonceLog
from .handshake import _proof as _proof  # tests build proofs by hand

__all__ = [
    "BODY",
    "MAX_FRAME",
    "MAX_PIECE",
    "MAX_REQUESTS",
    "NEED_DATA",
    "PROTOCOL_VERSION",
    "Auth",
    "Bitfield",
    "Cancel",
    "Close",
    "Connection",
    "ConnectionClosed",
    "Event",
    "Have",
    "Hello",
    "Interested",
    "KeepAlive",
    "LocalProtocolError",
    "NonceLog",
    "NotInterested",
    "Piece",
    "ProtocolError",
    "Reject",
    "RemoteProtocolError",
    "Request",
    "Role",
    "Signal",
    "State",
    "Welcome",
]
