"""The wire protocol v2 ``Connection`` under a hostile peer: mutated byte streams, both roles.

The peer's stream is an honest handshake (fixed nonces make it the same every time), then what
a real peer ``Connection`` sends when the rules allow it, with frames out of turn, bursts of
keepalives and requests, malformed frames and raw noise mixed in; then a few bytes may be
replaced, inserted or deleted, and the result arrives in random chunks. The end under test
reacts as the agent's I/O layer would (completes the handshake, asks for a blob, answers
interest and rejects some requests). Whatever arrives:

- only a ``RemoteProtocolError`` leaves ``next_event`` (our own sends, valid by construction,
  never raise); after one the connection is closed and raises the same error again;
- every event is one the rules allow now, and the bounds hold: the peer's requests in flight,
  piece sizes, keepalives (the clock is frozen, so at most the burst), and no more body than
  the PIECE announced;
- the codec always makes progress, and the stream ends in ``ConnectionClosed`` or an error.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.p2p.wire import (
    BODY,
    NEED_DATA,
    Auth,
    Bitfield,
    Cancel,
    Close,
    Connection,
    ConnectionClosed,
    Event,
    Have,
    Hello,
    Interested,
    KeepAlive,
    LocalProtocolError,
    NonceLog,
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

from .harness import counted, fuzzed

SECRET = b"fuzz-secret-" * 3
OURS = "sha256:" + "ab" * 32
"""the blob the end under test is interested in, of ``PIECES`` pieces."""
PIECES = 9
OTHERS = ["sha256:" + "cd" * 32, "sha512:" + "ef" * 64]
MAX_FRAME = 300
MAX_PIECE = 64
MAX_REQUESTS = 4
"""the bounds of the end under test: small, so that the cases reach them."""
KEEPALIVE_BURST = 4
OPENING: list[Event] = [Interested(OURS, PIECES), *(Request(OURS, i) for i in (0, 1, 2)), Cancel(OURS, 2)]
"""what the end under test says once established (piece 2's PIECE or REJECT must still arrive)."""
ALGORITHMS = {"sha256": 1, "sha512": 2}
CODES: dict[type, int] = {
    Hello: 0x01,
    Welcome: 0x02,
    Auth: 0x03,
    Interested: 0x10,
    NotInterested: 0x11,
    Bitfield: 0x12,
    Have: 0x13,
    Request: 0x20,
    Piece: 0x21,
    Cancel: 0x22,
    Reject: 0x23,
    KeepAlive: 0x30,
    Close: 0x31,
}
"""the frame type of each event, written out here rather than taken from the codec."""


def nonces(seed: bytes) -> Callable[[int], bytes]:
    """Fixed but random-looking nonces: a mutation will not stumble on one."""
    counter = itertools.count()
    return lambda n: hashlib.sha512(seed + next(counter).to_bytes(8, "big")).digest()[:n]


def ends(role: Role) -> tuple[Connection, Connection]:
    """A fresh end under test in ``role`` and an honest peer, each with its fixed nonces."""
    other = Role.SERVER if role is Role.CLIENT else Role.CLIENT
    guard = NonceLog(8) if role is Role.SERVER else None
    me = Connection(
        role,
        secret=SECRET,
        clock=lambda: 0.0,
        nonce=nonces(b"me"),
        replay_guard=guard,
        max_frame=MAX_FRAME,
        max_piece=MAX_PIECE,
        max_requests=MAX_REQUESTS,
    )
    peer = Connection(other, secret=SECRET, clock=lambda: 0.0, nonce=nonces(b"peer"))
    return me, peer


def opened(role: Role) -> tuple[bytes, Connection]:
    """A fresh end's honest peer past the handshake and our ``OPENING``, and its handshake bytes."""
    me, peer = ends(role)
    if role is Role.SERVER:
        handshake = peer.send(Hello("peer"))
        me.receive_data(handshake)
        assert me.next_event() == Hello("peer")
        peer.receive_data(me.send(Welcome("me")))
        assert peer.next_event() == Welcome("me")
        auth = peer.send(Auth())
        me.receive_data(auth)
        assert me.next_event() == Auth()
        handshake += auth
    else:
        peer.receive_data(me.send(Hello("me")))
        assert peer.next_event() == Hello("me")
        handshake = peer.send(Welcome("peer"))
        me.receive_data(handshake)
        assert me.next_event() == Welcome("peer")
        peer.receive_data(me.send(Auth()))
        assert peer.next_event() == Auth()
    peer.receive_data(b"".join(me.send(ev) for ev in OPENING))
    assert [peer.next_event() for _ in OPENING] == OPENING
    return handshake, peer


HANDSHAKES = {role: opened(role)[0] for role in Role}
"""the same on every connection: the nonces are fixed."""


def raw_frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">IB", len(payload) + 1, kind) + payload


def raw_digest(digest: str) -> bytes:
    algorithm, hex_ = digest.split(":")
    return bytes([ALGORITHMS[algorithm]]) + bytes.fromhex(hex_)


def encode(ev: Event) -> bytes:
    """``ev`` in the wire format whether the rules allow it now or not."""
    if isinstance(ev, KeepAlive):
        return raw_frame(CODES[KeepAlive], b"")
    if isinstance(ev, Close):
        return raw_frame(CODES[Close], ev.reason.encode())
    assert isinstance(ev, Interested | NotInterested | Bitfield | Have | Request | Piece | Cancel | Reject)
    payload = raw_digest(ev.digest)
    for f in fields(ev)[1:]:
        if not f.compare:  # ours only (an interest's blob size): not on the wire
            continue
        value = getattr(ev, f.name)
        payload += value if isinstance(value, bytes) else struct.pack(">I", value)
    return raw_frame(CODES[type(ev)], payload)


u32s = st.sampled_from([0, 1, PIECES - 1, PIECES, 64, 65, 2**31, 2**32 - 1]) | st.integers(0, 2**32 - 1)
blobs = st.sampled_from([OURS, *OTHERS])
indices = st.integers(0, 3) | st.integers(0, PIECES + 1)
peer_events: st.SearchStrategy[Event] = st.one_of(
    st.builds(Interested, blobs, st.integers(1, 12) | u32s),
    st.builds(NotInterested, blobs),
    st.builds(Bitfield.of, st.just(OURS), st.just(PIECES), st.sets(st.integers(0, PIECES - 1))),
    st.builds(Bitfield, blobs, indices, st.binary(max_size=4)),
    st.builds(Have, st.just(OURS) | blobs, indices),
    st.builds(Request, blobs, indices),
    st.builds(Cancel, blobs, indices),
    st.builds(Piece, st.just(OURS), indices, st.sampled_from([1, MAX_PIECE, MAX_PIECE + 1]) | st.integers(1, 9)),
    st.builds(Reject, st.just(OURS), indices),
    st.just(KeepAlive()),
)
"""what a peer says after the handshake, in turn or not (CLOSE apart: it ends the stream)."""


def allowed(peer: Connection, ev: Event) -> bytes:
    """What the honest ``peer`` sends for ``ev``, or nothing if the rules do not allow it now."""
    try:
        return peer.send(ev)
    except LocalProtocolError:
        return b""


@st.composite
def peer_bytes(draw: st.DrawFn, role: Role) -> bytes:
    """A peer's stream: the handshake (mostly), then events (sent by an honest peer when the rules
    allow, out of turn now and then), any frame now and then, and raw noise."""
    handshake, peer = opened(role)
    out = bytearray(handshake if draw(st.integers(0, 9)) else b"")
    wanted: set[str] = set()  # the blobs the peer said INTERESTED in: its requests mostly name one
    for _ in range(draw(st.integers(0, 16))):
        choice = draw(st.integers(0, 39))
        if choice == 0:
            out += draw(st.binary(min_size=1, max_size=12))
        elif choice == 1:
            out += raw_frame(draw(st.integers(0, 255)), draw(st.binary(max_size=40)))
        elif choice == 2:
            out += encode(Close(draw(st.text(max_size=20))))
        elif choice in (3, 4):  # a burst of keepalives, to reach the bound
            out += encode(KeepAlive()) * draw(st.integers(1, KEEPALIVE_BURST + 2))
        elif choice in (5, 6, 7, 8):  # a burst of requests, to reach the bound (we reject odd ones), cancels
            blob, n = draw(blobs), draw(st.integers(1, 2 * MAX_REQUESTS + 2))
            if blob not in wanted and (frame := allowed(peer, Interested(blob, 2 * MAX_REQUESTS + 2))):
                out += frame
                wanted.add(blob)
            out += b"".join(allowed(peer, Request(blob, i)) for i in range(n))
            out += b"".join(allowed(peer, Cancel(blob, i)) for i in sorted(draw(st.sets(st.integers(0, n)))))
        else:
            ev = draw(peer_events)
            if isinstance(ev, Request | Cancel | NotInterested) and wanted and draw(st.booleans()):
                ev = replace(ev, digest=draw(st.sampled_from(sorted(wanted))))
            try:
                frame = peer.send(ev)
            except LocalProtocolError:
                if draw(st.integers(0, 3)):  # skipped: the stream goes on, deeper
                    continue
                frame = encode(ev)
            out += frame
            if isinstance(ev, Interested):
                wanted.add(ev.digest)
            elif isinstance(ev, NotInterested):
                wanted.discard(ev.digest)
            elif isinstance(ev, Piece):
                out += b"\xa5" * ev.length
                peer.body_sent(peer.body_owed)
    return bytes(out)


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):
        at = draw(st.integers(0, len(out)))
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        if op == "set" and at < len(out):
            out[at] = draw(st.integers(0, 255))
        elif op == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del out[at : at + draw(st.integers(1, 8))]
        elif op == "truncate":
            del out[at:]
    return bytes(out)


@st.composite
def streams(draw: st.DrawFn, role: Role) -> list[bytes]:
    """What the peer sends the end in ``role``, perhaps mutated, in the chunks it arrives in."""
    data = draw(mutations(draw(peer_bytes(role))))
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=6))))
    return [data[a:b] for a, b in itertools.pairwise([0, *cuts, len(data)]) if b > a]


@dataclass
class Model:
    """What the end under test has said, and so what the peer may send it now."""

    me: Connection
    established: bool = False
    outstanding: set[int] = field(default_factory=set)
    bitfield: bool = False
    their_interest: dict[str, int] = field(default_factory=dict)
    their_requests: set[tuple[str, int]] = field(default_factory=set)
    keepalives: int = 0
    closed: bool = False

    def establish(self) -> None:
        assert self.me.state is State.ESTABLISHED
        assert self.me.peer_id == "peer"
        self.established = True
        for ev in OPENING:
            self.me.send(ev)
        self.outstanding = {ev.index for ev in OPENING if isinstance(ev, Request)}

    def react(self, ev: Event) -> None:
        assert not self.closed, f"{ev} after CLOSE"
        if isinstance(ev, Close):
            self.closed = True
            assert self.me.state is State.CLOSED
            return
        if isinstance(ev, Hello):
            assert self.me.role is Role.SERVER
            assert not self.established
            self.me.send(Welcome("me"))
            return
        if isinstance(ev, Welcome):
            assert self.me.role is Role.CLIENT
            self.me.send(Auth())
            self.establish()
            return
        if isinstance(ev, Auth):
            assert self.me.role is Role.SERVER
            self.establish()
            return
        assert self.established, f"{ev} before the handshake completed"
        assert self.me.state is State.ESTABLISHED
        if isinstance(ev, KeepAlive):
            self.keepalives += 1
            assert self.keepalives <= KEEPALIVE_BURST
        elif isinstance(ev, Interested):
            assert ev.digest not in self.their_interest
            assert ev.pieces >= 1
            self.their_interest[ev.digest] = ev.pieces
            if ev.pieces <= 64:
                self.me.send(Bitfield.of(ev.digest, ev.pieces, range(0, ev.pieces, 2)))
        elif isinstance(ev, NotInterested):
            assert self.their_interest.pop(ev.digest, None) is not None
        elif isinstance(ev, Request):
            key = (ev.digest, ev.index)
            assert ev.digest in self.their_interest
            assert ev.index < self.their_interest[ev.digest]
            assert key not in self.their_requests
            self.their_requests.add(key)
            assert len(self.their_requests) <= MAX_REQUESTS
            if ev.index % 2:
                self.me.send(Reject(ev.digest, ev.index))
                self.their_requests.discard(key)
        elif isinstance(ev, Cancel):
            assert (ev.digest, ev.index) in self.their_requests
            self.their_requests.remove((ev.digest, ev.index))
        elif isinstance(ev, Bitfield):
            assert (ev.digest, ev.pieces, len(ev.bits)) == (OURS, PIECES, 2)
            assert not self.bitfield
            assert not ev.bits[-1] & 0x7F
            self.bitfield = True
        elif isinstance(ev, Have):
            assert ev.digest == OURS
            assert self.bitfield
            assert ev.index < PIECES
        elif isinstance(ev, Piece | Reject):
            assert ev.digest == OURS
            assert ev.index in self.outstanding
            self.outstanding.remove(ev.index)
            if isinstance(ev, Piece):
                assert 1 <= ev.length <= MAX_PIECE
                assert self.me.body_remaining == ev.length
        else:
            raise AssertionError(f"unexpected event {ev!r}")


def converse(role: Role, chunks: list[bytes]) -> None:
    me, _peer = ends(role)
    if role is Role.CLIENT:
        me.send(Hello("me"))
    try:
        run(me, chunks)
    except RemoteProtocolError as exc:
        error = exc
    else:
        return
    assert me.state is State.CLOSED
    with pytest.raises(RemoteProtocolError) as again:
        me.next_event()
    assert again.value is error


def run(me: Connection, chunks: list[bytes]) -> None:
    """Feed ``chunks`` then the end of the stream, taking events and bodies as the I/O layer does."""
    model = Model(me)
    steps = 0
    for chunk in [*chunks, b""]:
        me.receive_data(chunk)
        while True:
            steps += 1
            assert steps <= sum(map(len, chunks)) + 2 * len(chunks) + 4, "the codec made no progress"
            ev = me.next_event()
            if ev is NEED_DATA:
                assert chunk, "NEED_DATA after the end of the stream"
                break
            if ev is BODY:
                before = me.body_remaining
                got = me.take_body()
                assert len(got) <= before
                assert me.body_remaining == before - len(got)
                if not got:
                    assert chunk, "BODY with nothing buffered after the end of the stream"
                    break
                continue
            assert not isinstance(ev, Signal)
            assert me.body_remaining == 0 or isinstance(ev, Piece)
            if isinstance(ev, ConnectionClosed):
                assert not chunk
                assert me.state is State.CLOSED
                return
            model.react(ev)
    raise AssertionError("the stream ended without ConnectionClosed")


@fuzzed
@given(streams(Role.SERVER))
@counted("wire connection server end")
def test_server_end(chunks: list[bytes]) -> None:
    converse(Role.SERVER, chunks)


@fuzzed
@given(streams(Role.CLIENT))
@counted("wire connection client end")
def test_client_end(chunks: list[bytes]) -> None:
    converse(Role.CLIENT, chunks)
