"""The connection state machine of wire protocol v2: one end of a peer connection, no I/O.

Rules the state machine enforces (a peer's breach is a :class:`RemoteProtocolError`, ours a
:class:`LocalProtocolError`): handshake frames in order and only then; a BITFIELD only in
answer to INTERESTED and a HAVE only after it; a PIECE or REJECT only for a request in flight;
at most ``max_requests`` of the peer's requests in flight; piece bodies at most ``max_piece``,
and exactly the requested piece's length when we said the blob's size (so a parent cannot make
us allocate more than we asked for); nothing after CLOSE. Frames that can race a message of
ours are dropped, not errors: BITFIELD and HAVE after our NOT_INTERESTED, CANCEL after we
answered. A PIECE we cancelled still arrives as an event (its body must be read off the
stream). Keepalives: :meth:`Connection.send` allows one only when nothing was sent for
``keepalive_interval``, and a peer gets a bucket of 4 that refills at 2 per interval (bursts
after a starved reader pass, a flood does not), so liveness costs a bounded number of frames
per second per connection however long it lives.
"""

from __future__ import annotations

import enum
import hmac
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from shoal.p2p.pieces import choose_piece_size, piece_count, piece_span

from .codec import (
    _T,
    _U32,
    KEEPALIVE_INTERVAL,
    MAC_SIZE,
    MAX_BLOBS,
    MAX_FRAME,
    MAX_PIECE,
    MAX_REASON,
    MAX_REQUESTS,
    MIN_SECRET,
    NONCE_SIZE,
    PROTOCOL_VERSION,
    _check_bits,
    _digest,
    _frame,
    _Reader,
    _short,
    _u32,
)
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
    Reject,
    RemoteProtocolError,
    Request,
    Role,
    Signal,
    State,
    Welcome,
)
from .handshake import NonceLog, _proof

_KEEPALIVE_BURST = 4.0
_KEEPALIVE_REFILL = 2.0  # tokens per keepalive_interval


@dataclass(slots=True)
class _Interest:
    """One side's interest in a blob on this connection."""

    pieces: int
    size: int | None = None
    """ours: the blob's size, when we said it (the piece geometry follows from it)"""
    bitfield: bool = False
    """the answering BITFIELD went out (their interest) or came in (ours)"""
    stale: int = 0
    """ours, renewed after a NOT_INTERESTED: BITFIELDs still owed to the earlier interests
    (dropped when they come, like any HAVE before this interest's own BITFIELD)"""
    renewed: bool = False


class _Hs(enum.Enum):
    START = 0
    SENT_HELLO = 1  # client
    GOT_WELCOME = 2  # client
    GOT_HELLO = 3  # server
    SENT_WELCOME = 4  # server
    DONE = 5


_HANDSHAKE_KINDS = frozenset({_T.HELLO, _T.WELCOME, _T.AUTH})
_EXPECT = {
    Role.SERVER: {_Hs.START: _T.HELLO, _Hs.SENT_WELCOME: _T.AUTH},
    Role.CLIENT: {_Hs.SENT_HELLO: _T.WELCOME},
}


class Connection:
    """One end of a peer connection: the frame codec and the state machine, no I/O.

    Parameters:
        role: ``CLIENT`` for the end that connected (it speaks first), ``SERVER`` otherwise.
        secret: the peer secret both ends share (at least 16 bytes).
        clock: seconds, monotonic; injected so keepalive rules are testable.
        nonce: ``n -> n random bytes``; injected for tests.
        replay_guard: a server's log of client nonces, shared between its connections.
        max_frame, max_piece, max_requests: bounds on what the peer may send.
        keepalive_interval: idle seconds before a keepalive is due (the same at both ends).
    """

    def __init__(
        self,
        role: Role,
        *,
        secret: bytes,
        clock: Callable[[], float] = time.monotonic,
        nonce: Callable[[int], bytes] = os.urandom,
        replay_guard: NonceLog | None = None,
        max_frame: int = MAX_FRAME,
        max_piece: int = MAX_PIECE,
        max_requests: int = MAX_REQUESTS,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
    ) -> None:
        if len(secret) < MIN_SECRET:
            raise ValueError(f"the peer secret must be at least {MIN_SECRET} bytes")
        self.role = role
        self._secret = secret
        self._clock = clock
        self._nonce = nonce
        self._replay_guard = replay_guard
        self.max_frame = max_frame
        self.max_bitfield_pieces = (max_frame - 1 - 65 - 4) * 8
        """the most pieces a BITFIELD frame can carry (type, the longest digest, the count)"""
        self.max_piece = max_piece
        self.max_requests = max_requests
        self.keepalive_interval = keepalive_interval
        self.state = State.HANDSHAKE
        self.peer_id: str | None = None
        """The peer's id once it proved it holds the secret."""
        self._hs = _Hs.START
        self._own_id = ""
        self._claimed_id = ""
        self._nc = b""
        self._ns = b""
        self._buf = bytearray()
        self._eof = False
        self._error: RemoteProtocolError | None = None
        self._their_close = False
        self._recv_body = 0
        self._send_body = 0
        now = clock()
        self._last_sent = now
        self._last_received = now
        self._keepalive_tokens = _KEEPALIVE_BURST
        self._keepalive_at = now
        self._we_want: dict[str, _Interest] = {}
        self._retracted: dict[str, int] = {}
        """blobs we said NOT_INTERESTED in: their BITFIELD and HAVE may still be on the way"""
        self._they_want: dict[str, _Interest] = {}
        self._our_requests: dict[tuple[str, int], bool] = {}  # -> cancelled
        self._request_lengths: dict[tuple[str, int], int] = {}
        """our requests of pieces whose length we know: the PIECE must match"""
        self._their_requests: set[tuple[str, int]] = set()

    # -- receiving -----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the socket; ``b""`` means the peer closed its end."""
        if self._eof:
            raise LocalProtocolError("data after end of stream")
        if not data:
            self._eof = True
            return
        self._buf += data
        self._last_received = self._clock()

    @property
    def body_remaining(self) -> int:
        """Body bytes of the current incoming piece not yet taken or reported."""
        return self._recv_body

    def take_body(self, max_bytes: int | None = None) -> bytes:
        """Body bytes already buffered here (read these before reading the socket yourself)."""
        if max_bytes is not None and max_bytes < 0:
            raise LocalProtocolError(f"{max_bytes} body bytes asked for")
        n = min(self._recv_body, len(self._buf), self._recv_body if max_bytes is None else max_bytes)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        self._recv_body -= n
        return out

    def body_received(self, n: int) -> None:
        """``n`` body bytes were read straight from the socket (``recv_into``)."""
        if self._buf and self._recv_body:
            raise LocalProtocolError("take the buffered body bytes first (take_body)")
        if not 0 <= n <= self._recv_body:
            raise LocalProtocolError(f"{n} body bytes reported, {self._recv_body} expected")
        self._recv_body -= n
        self._last_received = self._clock()

    def next_event(self) -> Event | Signal:
        """The next event, :data:`NEED_DATA`, or :data:`BODY` while a piece body is pending."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except RemoteProtocolError as exc:
            self._error = exc
            self.state = State.CLOSED
            raise

    def _next(self) -> Event | Signal:
        while True:
            if self._recv_body:
                if self._eof and not self._buf:
                    raise RemoteProtocolError(f"connection closed with {self._recv_body} piece body bytes missing")
                return BODY
            if len(self._buf) < _U32.size:
                return self._at_end(partial=bool(self._buf))
            (length,) = _U32.unpack_from(self._buf)
            if length == 0 or length > self.max_frame:
                raise RemoteProtocolError(f"frame of {length} bytes (allowed 1..{self.max_frame})")
            if len(self._buf) < 4 + length:
                return self._at_end(partial=True)
            kind_code = self._buf[4]
            payload = bytes(self._buf[5 : 4 + length])
            del self._buf[: 4 + length]
            try:
                kind = _T(kind_code)
            except ValueError:
                raise RemoteProtocolError(f"unknown frame type 0x{kind_code:02x}") from None
            event = self._receive(kind, _Reader(kind, payload))
            if event is not None:
                return event

    def _at_end(self, *, partial: bool) -> Event | Signal:
        if not self._eof:
            return NEED_DATA
        if partial:
            raise RemoteProtocolError("connection closed inside a frame (truncated)")
        self.state = State.CLOSED
        return ConnectionClosed()

    def _receive(self, kind: _T, r: _Reader) -> Event | None:
        if self._their_close:
            raise RemoteProtocolError(f"{kind.name} after CLOSE")
        if self.state is State.CLOSED:
            return None  # we closed: what was already on its way is dropped
        if kind is _T.CLOSE:  # allowed in the handshake too: "who are you?" deserves a reason
            if len(r.data) > MAX_REASON:
                raise RemoteProtocolError(f"CLOSE reason longer than {MAX_REASON} bytes")
            reason = r.text(len(r.data))
            self._their_close = True
            self.state = State.CLOSED
            return Close(reason)
        if kind in _HANDSHAKE_KINDS or self.state is State.HANDSHAKE:
            return self._receive_handshake(kind, r)
        if kind is _T.KEEPALIVE:
            r.end()
            self._spend_keepalive_token()
            return KeepAlive()
        digest = r.digest()
        if kind is _T.INTERESTED:
            pieces = r.u32()
            r.end()
            return self._on_interested(Interested(digest, pieces))
        if kind is _T.NOT_INTERESTED:
            r.end()
            if digest not in self._they_want:
                raise RemoteProtocolError(f"NOT_INTERESTED in {digest[:19]} without INTERESTED")
            del self._they_want[digest]
            return NotInterested(digest)
        if kind is _T.BITFIELD:
            pieces = r.u32()
            bits = r.rest()
            return self._on_bitfield(Bitfield(digest, pieces, bits))
        index = r.u32()
        if kind is _T.PIECE:
            length = r.u32()
            r.end()
            return self._on_piece(Piece(digest, index, length))
        r.end()
        if kind is _T.HAVE:
            return self._on_have(Have(digest, index))
        if kind is _T.REQUEST:
            return self._on_request(Request(digest, index))
        if kind is _T.CANCEL:
            return self._on_cancel(Cancel(digest, index))
        return self._on_reject(Reject(digest, index))

    def _receive_handshake(self, kind: _T, r: _Reader) -> Event:
        if _EXPECT[self.role].get(self._hs) is not kind:
            raise RemoteProtocolError(
                f"{kind.name} frame during {self.state.value} ({self.role.value}, {self._hs.name})"
            )
        if kind is _T.HELLO:
            version, self._nc, self._claimed_id = r.u8(), r.take(NONCE_SIZE), r.short()
            r.end()
            self._check_version(version)
            if self._replay_guard is not None and not self._replay_guard.admit(self._nc):
                raise RemoteProtocolError("HELLO replays a nonce already seen")
            self._hs = _Hs.GOT_HELLO
            return Hello(self._claimed_id)
        if kind is _T.WELCOME:
            version, self._ns, proof, self._claimed_id = r.u8(), r.take(NONCE_SIZE), r.take(MAC_SIZE), r.short()
            r.end()
            self._check_version(version)
            if self._ns == self._nc:
                raise RemoteProtocolError("WELCOME reflects our own nonce")
            want = _proof(self._secret, b"server", self._nc, self._ns, self._own_id, self._claimed_id)
            if not hmac.compare_digest(proof, want):
                raise RemoteProtocolError("peer failed authentication: bad WELCOME proof (wrong peer secret?)")
            self.peer_id = self._claimed_id
            self._hs = _Hs.GOT_WELCOME
            return Welcome(self._claimed_id)
        proof = r.take(MAC_SIZE)
        r.end()
        want = _proof(self._secret, b"client", self._nc, self._ns, self._claimed_id, self._own_id)
        if not hmac.compare_digest(proof, want):
            raise RemoteProtocolError("peer failed authentication: bad AUTH proof (wrong peer secret?)")
        self.peer_id = self._claimed_id
        self._hs = _Hs.DONE
        self.state = State.ESTABLISHED
        return Auth()

    @staticmethod
    def _check_version(version: int) -> None:
        if version != PROTOCOL_VERSION:
            raise RemoteProtocolError(f"peer speaks protocol version {version}, we speak {PROTOCOL_VERSION}")

    def _spend_keepalive_token(self) -> None:
        now = self._clock()
        refill = (now - self._keepalive_at) * _KEEPALIVE_REFILL / self.keepalive_interval
        self._keepalive_tokens = min(_KEEPALIVE_BURST, self._keepalive_tokens + refill)
        self._keepalive_at = now
        if self._keepalive_tokens < 1.0:
            raise RemoteProtocolError("keepalive flood")
        self._keepalive_tokens -= 1.0

    def _on_interested(self, event: Interested) -> Event:
        if event.digest in self._they_want:
            raise RemoteProtocolError(f"INTERESTED in {event.digest[:19]} twice")
        if len(self._they_want) >= MAX_BLOBS:
            raise RemoteProtocolError(f"INTERESTED in more than {MAX_BLOBS} blobs")
        if not 1 <= event.pieces <= self.max_bitfield_pieces:
            raise RemoteProtocolError(
                f"INTERESTED in a blob of {event.pieces} pieces (a bitfield holds 1..{self.max_bitfield_pieces})"
            )
        self._they_want[event.digest] = _Interest(event.pieces)
        return event

    def _on_bitfield(self, event: Bitfield) -> Event | None:
        _check_bits(event.pieces, event.bits, RemoteProtocolError)
        if event.digest in self._retracted:
            self._retracted[event.digest] = max(0, self._retracted[event.digest] - 1)
            return None
        ours = self._we_want.get(event.digest)
        if ours is None:
            raise RemoteProtocolError(f"BITFIELD of {event.digest[:19]} we did not ask about")
        if ours.stale and not ours.bitfield:
            ours.stale -= 1  # the answer to an interest we took back
            return None
        if ours.bitfield:
            raise RemoteProtocolError(f"second BITFIELD of {event.digest[:19]}")
        if event.pieces != ours.pieces:
            raise RemoteProtocolError(f"BITFIELD of {event.pieces} pieces, we asked about {ours.pieces}")
        ours.bitfield = True
        return event

    def _on_have(self, event: Have) -> Event | None:
        if event.digest in self._retracted:
            return None
        ours = self._we_want.get(event.digest)
        if ours is None:
            raise RemoteProtocolError(f"HAVE of {event.digest[:19]} we did not ask about")
        if not ours.bitfield:
            if ours.renewed:
                return None  # sent for an interest we took back, before the peer heard so
            raise RemoteProtocolError(f"HAVE of {event.digest[:19]} before its BITFIELD")
        if event.index >= ours.pieces:
            raise RemoteProtocolError(f"HAVE of piece {event.index} of a {ours.pieces}-piece blob")
        return event

    def _on_request(self, event: Request) -> Event:
        key = (event.digest, event.index)
        theirs = self._they_want.get(event.digest)
        if theirs is None:
            raise RemoteProtocolError(f"REQUEST for {event.digest[:19]} without INTERESTED")
        if key in self._their_requests:
            raise RemoteProtocolError(f"REQUEST for piece {event.index} twice")
        if len(self._their_requests) >= self.max_requests:
            raise RemoteProtocolError(f"more than {self.max_requests} requests in flight")
        if event.index >= theirs.pieces:
            raise RemoteProtocolError(f"REQUEST for piece {event.index} of a {theirs.pieces}-piece blob")
        self._their_requests.add(key)
        return event

    def _on_cancel(self, event: Cancel) -> Event | None:
        key = (event.digest, event.index)
        if key not in self._their_requests:
            return None  # raced our PIECE or REJECT
        self._their_requests.discard(key)
        return event

    def _on_piece(self, event: Piece) -> Event:
        key = (event.digest, event.index)
        if key not in self._our_requests:
            raise RemoteProtocolError(f"PIECE {event.index} of {event.digest[:19]} nobody asked for")
        if not 1 <= event.length <= self.max_piece:
            raise RemoteProtocolError(f"PIECE body of {event.length} bytes (allowed 1..{self.max_piece})")
        want = self._request_lengths.pop(key, None)
        if want is not None and event.length != want:
            raise RemoteProtocolError(f"PIECE {event.index} of {event.length} bytes, the piece is {want}")
        del self._our_requests[key]
        self._recv_body = event.length
        return event

    def _on_reject(self, event: Reject) -> Event:
        key = (event.digest, event.index)
        if key not in self._our_requests:
            raise RemoteProtocolError(f"REJECT of piece {event.index} nobody asked for")
        del self._our_requests[key]
        self._request_lengths.pop(key, None)
        return event

    # -- sending -------------------------------------------------------------------------

    def send(self, event: Event) -> bytes:
        """The bytes to write for ``event``; raises :class:`LocalProtocolError` if not allowed now."""
        if self.state is State.CLOSED:
            raise LocalProtocolError(f"cannot send {type(event).__name__}: the connection is closed")
        if self._send_body:
            raise LocalProtocolError(f"cannot send {type(event).__name__}: {self._send_body} piece body bytes owed")
        data = self._encode(event)
        self._last_sent = self._clock()
        return data

    @property
    def body_owed(self) -> int:
        """Body bytes of the piece we are sending that are not yet reported sent."""
        return self._send_body

    def body_sent(self, n: int) -> None:
        """``n`` body bytes of the current outgoing piece went out (``sendfile``)."""
        if not 0 <= n <= self._send_body:
            raise LocalProtocolError(f"{n} body bytes reported sent, {self._send_body} owed")
        self._send_body -= n
        self._last_sent = self._clock()

    def keepalive_due(self) -> bool:
        """Nothing was sent for ``keepalive_interval``: send a :class:`KeepAlive` now."""
        idle = self._clock() - self._last_sent
        return self.state is State.ESTABLISHED and not self._send_body and idle >= self.keepalive_interval

    def silent_for(self) -> float:
        """Seconds since the peer's last byte (close it after about three keepalive intervals)."""
        return self._clock() - self._last_received

    def _encode(self, event: Event) -> bytes:
        if isinstance(event, Hello | Welcome | Auth):
            return self._send_handshake(event)
        if isinstance(event, ConnectionClosed):
            raise LocalProtocolError("ConnectionClosed is not sent: close the socket")
        if isinstance(event, Close):
            raw = event.reason.encode()
            if len(raw) > MAX_REASON:
                raise LocalProtocolError(f"close reason longer than {MAX_REASON} bytes")
            self.state = State.CLOSED
            return _frame(_T.CLOSE, raw)
        if self.state is not State.ESTABLISHED:
            raise LocalProtocolError(f"cannot send {type(event).__name__} before the handshake completes")
        if isinstance(event, KeepAlive):
            if not self.keepalive_due():
                raise LocalProtocolError("keepalive not due: something was sent within the interval")
            return _frame(_T.KEEPALIVE)
        d = _digest(event.digest)
        if isinstance(event, Interested):
            if event.digest in self._we_want:
                raise LocalProtocolError(f"already interested in {event.digest[:19]}")
            if not 1 <= event.pieces <= self.max_bitfield_pieces:
                raise LocalProtocolError(f"interest in a blob of {event.pieces} pieces")
            if event.size is not None and piece_count(event.size, choose_piece_size(event.size)) != event.pieces:
                raise LocalProtocolError(f"a blob of {event.size} bytes does not have {event.pieces} pieces")
            frame = _frame(_T.INTERESTED, d + _u32(event.pieces, "pieces"))
            renewed = event.digest in self._retracted
            stale = self._retracted.pop(event.digest, 0)
            self._we_want[event.digest] = _Interest(event.pieces, event.size, stale=stale, renewed=renewed)
            return frame
        if isinstance(event, NotInterested):
            if event.digest not in self._we_want:
                raise LocalProtocolError(f"not interested in {event.digest[:19]}")
            taken = self._we_want.pop(event.digest)
            self._retracted[event.digest] = taken.stale + (0 if taken.bitfield else 1)
            if len(self._retracted) > MAX_BLOBS:
                del self._retracted[next(iter(self._retracted))]
            return _frame(_T.NOT_INTERESTED, d)
        if isinstance(event, Bitfield):
            _check_bits(event.pieces, event.bits, LocalProtocolError)
            theirs = self._they_want.get(event.digest)
            if theirs is None or theirs.bitfield:
                raise LocalProtocolError(f"BITFIELD of {event.digest[:19]} answers no INTERESTED")
            if event.pieces != theirs.pieces:
                raise LocalProtocolError(f"BITFIELD of {event.pieces} pieces, the peer asked about {theirs.pieces}")
            frame = _frame(_T.BITFIELD, d + _u32(event.pieces, "pieces") + event.bits)
            theirs.bitfield = True
            return frame
        index = _u32(event.index, "piece index")
        key = (event.digest, event.index)
        if isinstance(event, Have):
            theirs = self._they_want.get(event.digest)
            if theirs is None:
                raise LocalProtocolError(f"HAVE of {event.digest[:19]}: the peer is not interested in it")
            if not theirs.bitfield:
                raise LocalProtocolError(f"HAVE of {event.digest[:19]} before a BITFIELD of it")
            if event.index >= theirs.pieces:
                raise LocalProtocolError(f"HAVE of piece {event.index} of a {theirs.pieces}-piece blob")
            return _frame(_T.HAVE, d + index)
        if isinstance(event, Request):
            ours = self._we_want.get(event.digest)
            if ours is None:
                raise LocalProtocolError(f"REQUEST for {event.digest[:19]} without INTERESTED")
            if event.index >= ours.pieces:
                raise LocalProtocolError(f"REQUEST for piece {event.index} of a {ours.pieces}-piece blob")
            if key in self._our_requests:
                raise LocalProtocolError(f"piece {event.index} already requested")
            self._our_requests[key] = False
            if ours.size is not None:
                self._request_lengths[key] = piece_span(event.index, ours.size, choose_piece_size(ours.size))[1]
            return _frame(_T.REQUEST, d + index)
        if isinstance(event, Cancel):
            if self._our_requests.get(key) is not False:
                raise LocalProtocolError(f"piece {event.index} is not a request in flight")
            self._our_requests[key] = True
            return _frame(_T.CANCEL, d + index)
        if key not in self._their_requests:
            raise LocalProtocolError(f"{type(event).__name__} of piece {event.index} answers no request")
        if isinstance(event, Piece):
            if not 1 <= event.length <= self.max_piece:
                raise LocalProtocolError(f"piece body of {event.length} bytes")
            frame = _frame(_T.PIECE, d + index + _u32(event.length, "length"))
            self._their_requests.discard(key)
            self._send_body = event.length
            return frame
        self._their_requests.discard(key)
        return _frame(_T.REJECT, d + index)

    def _send_handshake(self, event: Hello | Welcome | Auth) -> bytes:
        if isinstance(event, Hello) and self.role is Role.CLIENT and self._hs is _Hs.START:
            own = _short(event.peer_id, "peer id")
            self._own_id = event.peer_id
            self._nc = self._nonce(NONCE_SIZE)
            self._hs = _Hs.SENT_HELLO
            return _frame(_T.HELLO, bytes([PROTOCOL_VERSION]) + self._nc + own)
        if isinstance(event, Welcome) and self.role is Role.SERVER and self._hs is _Hs.GOT_HELLO:
            own = _short(event.peer_id, "peer id")
            ns = self._nonce(NONCE_SIZE)
            if ns == self._nc:
                raise LocalProtocolError("nonce source repeated the peer's nonce")
            self._own_id, self._ns = event.peer_id, ns
            proof = _proof(self._secret, b"server", self._nc, self._ns, self._claimed_id, self._own_id)
            self._hs = _Hs.SENT_WELCOME
            return _frame(_T.WELCOME, bytes([PROTOCOL_VERSION]) + self._ns + proof + own)
        if isinstance(event, Auth) and self.role is Role.CLIENT and self._hs is _Hs.GOT_WELCOME:
            proof = _proof(self._secret, b"client", self._nc, self._ns, self._own_id, self._claimed_id)
            self._hs = _Hs.DONE
            self.state = State.ESTABLISHED
            return _frame(_T.AUTH, proof)
        raise LocalProtocolError(f"cannot send {type(event).__name__} now ({self.role.value}, {self._hs.name})")
