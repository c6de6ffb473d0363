"""Peer wire protocol v2 (sans-I/O): frames, the authenticated handshake and the state machine."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import struct
from collections.abc import Callable

import pytest

from shoal.p2p import wire
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

SECRET = b"s" * 32
D1 = "sha256:" + "11" * 32
D2 = "sha512:" + "22" * 64


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def nonces(start: int) -> Callable[[int], bytes]:
    counter = itertools.count(start)
    return lambda n: next(counter).to_bytes(n, "big")


def conn(
    role: Role,
    clock: Clock | None = None,
    *,
    secret: bytes = SECRET,
    replay_guard: NonceLog | None = None,
    limits: dict[str, int] | None = None,
) -> Connection:
    return Connection(
        role,
        secret=secret,
        clock=clock or Clock(),
        nonce=nonces(1 if role is Role.CLIENT else 1 << 40),
        replay_guard=replay_guard,
        max_frame=(limits or {}).get("max_frame", wire.MAX_FRAME),
        max_piece=(limits or {}).get("max_piece", wire.MAX_PIECE),
        max_requests=(limits or {}).get("max_requests", wire.MAX_REQUESTS),
    )


def drain(c: Connection) -> list[Event | Signal]:
    """Events until NEED_DATA or BODY (included, so a test sees where it stopped)."""
    out: list[Event | Signal] = []
    while True:
        ev = c.next_event()
        out.append(ev)
        if isinstance(ev, Signal | ConnectionClosed):
            return out


def deliver(data: bytes, to: Connection) -> list[Event | Signal]:
    to.receive_data(data)
    return drain(to)


def established(clock: Clock | None = None, **kw: int) -> tuple[Connection, Connection]:
    clock = clock or Clock()
    client, server = conn(Role.CLIENT, clock, limits=kw), conn(Role.SERVER, clock, limits=kw)
    assert deliver(client.send(Hello("client-a")), server) == [Hello("client-a"), NEED_DATA]
    assert deliver(server.send(Welcome("server-b")), client) == [Welcome("server-b"), NEED_DATA]
    assert deliver(client.send(Auth()), server) == [Auth(), NEED_DATA]
    return client, server


def frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">IB", len(payload) + 1, kind) + payload


def raw_digest(digest: str = D1) -> bytes:
    return b"\x01" + bytes.fromhex(digest.split(":", 1)[1])


class TestHandshake:
    """Both sides prove the secret; nothing else flows before that."""

    def test_both_ends_established_with_the_peer_ids(self) -> None:
        client, server = established()
        assert client.state is server.state is State.ESTABLISHED
        assert (client.peer_id, server.peer_id) == ("server-b", "client-a")

    def test_a_server_with_another_secret_is_refused_by_the_client(self) -> None:
        client, server = conn(Role.CLIENT), conn(Role.SERVER, secret=b"x" * 32)
        deliver(client.send(Hello("a")), server)
        client.receive_data(server.send(Welcome("b")))
        with pytest.raises(RemoteProtocolError, match="bad WELCOME proof"):
            client.next_event()
        assert client.state is State.CLOSED
        assert client.peer_id is None

    def test_a_forged_auth_is_refused_by_the_server(self) -> None:
        client, server = conn(Role.CLIENT), conn(Role.SERVER)
        deliver(client.send(Hello("a")), server)
        deliver(server.send(Welcome("b")), client)
        auth = bytearray(client.send(Auth()))
        auth[-1] ^= 1
        server.receive_data(bytes(auth))
        with pytest.raises(RemoteProtocolError, match="bad AUTH proof"):
            server.next_event()
        assert server.peer_id is None
        with pytest.raises(RemoteProtocolError, match="bad AUTH proof"):
            server.next_event()  # the error sticks

    def test_a_recorded_client_transcript_fails_on_a_new_connection(self) -> None:
        client, server = conn(Role.CLIENT), conn(Role.SERVER)
        hello = client.send(Hello("a"))
        deliver(hello, server)
        deliver(server.send(Welcome("b")), client)
        auth = client.send(Auth())
        # the attacker replays HELLO and AUTH to a fresh server: its new nonce breaks the proof
        fresh = Connection(Role.SERVER, secret=SECRET, clock=Clock(), nonce=nonces(777))
        assert deliver(hello, fresh) == [Hello("a"), NEED_DATA]
        fresh.send(Welcome("b"))
        fresh.receive_data(auth)
        with pytest.raises(RemoteProtocolError, match="bad AUTH proof"):
            fresh.next_event()

    def test_a_replayed_nonce_is_refused_with_a_nonce_log(self) -> None:
        log = NonceLog()
        hello = conn(Role.CLIENT).send(Hello("a"))
        first = conn(Role.SERVER, replay_guard=log)
        assert deliver(hello, first)[0] == Hello("a")
        second = conn(Role.SERVER, replay_guard=log)
        second.receive_data(hello)
        with pytest.raises(RemoteProtocolError, match="replays a nonce"):
            second.next_event()

    def test_the_nonce_log_is_bounded(self) -> None:
        log = NonceLog(capacity=2)
        assert [log.admit(n) for n in (b"a", b"b", b"a", b"c", b"a")] == [True, True, False, True, True]

    def test_a_welcome_reflecting_our_nonce_is_refused(self) -> None:
        client = conn(Role.CLIENT)
        hello = client.send(Hello("a"))
        nc = hello[6 : 6 + 32]
        proof = wire._proof(SECRET, b"server", nc, nc, "a", "b")
        client.receive_data(frame(0x02, b"\x02" + nc + proof + b"\x01b"))
        with pytest.raises(RemoteProtocolError, match="reflects our own nonce"):
            client.next_event()

    def test_the_proof_is_hmac_sha256_over_both_nonces_and_ids(self) -> None:
        client, server = conn(Role.CLIENT), conn(Role.SERVER)
        hello = client.send(Hello("a"))
        deliver(hello, server)
        welcome = server.send(Welcome("b"))
        nc, ns, proof = hello[6:38], welcome[6:38], welcome[38:70]
        message = b"shoal-p2p-v2\0server\0" + nc + ns + b"\x01a\x01b"
        assert proof == hmac.new(SECRET, message, hashlib.sha256).digest()

    def test_another_version_is_refused(self) -> None:
        hello = bytearray(conn(Role.CLIENT).send(Hello("a")))
        hello[5] = 3
        server = conn(Role.SERVER)
        server.receive_data(bytes(hello))
        with pytest.raises(RemoteProtocolError, match="version 3"):
            server.next_event()

    def test_a_short_secret_is_refused(self) -> None:
        with pytest.raises(ValueError, match="at least 16 bytes"):
            Connection(Role.CLIENT, secret=b"short")

    @pytest.mark.parametrize(
        "data",
        [
            frame(0x10, raw_digest()),  # INTERESTED first
            frame(0x30, b""),  # KEEPALIVE first
            frame(0x03, b"\0" * 32),  # AUTH before HELLO
            frame(0x02, b"\x02" + b"\0" * 64 + b"\x01x"),  # WELCOME to a server
        ],
    )
    def test_frames_before_hello_are_refused(self, data: bytes) -> None:
        server = conn(Role.SERVER)
        server.receive_data(data)
        with pytest.raises(RemoteProtocolError, match="during handshake"):
            server.next_event()

    def test_frames_between_hello_and_auth_are_refused(self) -> None:
        client, server = conn(Role.CLIENT), conn(Role.SERVER)
        deliver(client.send(Hello("a")), server)
        server.send(Welcome("b"))
        server.receive_data(frame(0x10, raw_digest()))
        with pytest.raises(RemoteProtocolError, match="INTERESTED frame during handshake"):
            server.next_event()

    def test_a_client_is_sent_no_hello(self) -> None:
        client = conn(Role.CLIENT)
        client.send(Hello("a"))
        client.receive_data(conn(Role.CLIENT).send(Hello("x")))
        with pytest.raises(RemoteProtocolError, match="HELLO frame during handshake"):
            client.next_event()

    @pytest.mark.parametrize("event", [Interested(D1, 10), KeepAlive(), Auth(), Welcome("b")])
    def test_sending_out_of_order_is_a_local_error(self, event: Event) -> None:
        client = conn(Role.CLIENT)
        with pytest.raises(LocalProtocolError):
            client.send(event)
        assert client.state is State.HANDSHAKE  # nothing was sent, nothing changed

    def test_handshake_frames_after_it_are_refused(self) -> None:
        client, server = established()
        with pytest.raises(LocalProtocolError, match="cannot send Hello now"):
            client.send(Hello("again"))
        server.receive_data(frame(0x01, b"\x02" + b"\0" * 32 + b"\x01x"))
        with pytest.raises(RemoteProtocolError, match="HELLO frame during established"):
            server.next_event()

    def test_close_with_a_reason_during_the_handshake(self) -> None:
        client, server = conn(Role.CLIENT), conn(Role.SERVER)
        deliver(client.send(Hello("a")), server)
        assert deliver(server.send(Close("unknown peer")), client)[0] == Close("unknown peer")
        assert client.state is State.CLOSED


STEPS: list[tuple[str, Event, bytes]] = [
    ("c", Interested(D1, 10), b""),
    ("s", Bitfield.of(D1, 10, [0, 3, 9]), b""),
    ("s", Have(D1, 4), b""),
    ("c", Request(D1, 3), b""),
    ("c", Request(D1, 4), b""),
    ("c", Request(D1, 9), b""),
    ("s", Piece(D1, 3, 5), b"hello"),
    ("s", Reject(D1, 4), b""),
    ("c", Cancel(D1, 9), b""),
    ("s", Interested(D2, 3), b""),
    ("c", Bitfield.of(D2, 3, []), b""),
    ("c", NotInterested(D1), b""),
    ("s", NotInterested(D2), b""),
    ("c", Close("done"), b""),
]
"""A legal conversation using every frame type after the handshake: (sender, event, body)."""

Feed = Callable[[Connection, bytes], tuple[list[Event], bytes]]


def whole(to: Connection, data: bytes) -> tuple[list[Event], bytes]:
    to.receive_data(data)
    return collect(to)


def byte_at_a_time(to: Connection, data: bytes) -> tuple[list[Event], bytes]:
    events: list[Event] = []
    body = b""
    for byte in data:
        to.receive_data(bytes([byte]))
        got, more = collect(to)
        events += got
        body += more
    return events, body


def collect(to: Connection) -> tuple[list[Event], bytes]:
    """Events until NEED_DATA, taking any piece body the codec holds."""
    events: list[Event] = []
    body = b""
    while (ev := to.next_event()) is not NEED_DATA:
        if ev is BODY:
            if not (more := to.take_body()):
                break
            body += more
            continue
        assert not isinstance(ev, Signal)
        events.append(ev)
    return events, body


def converse(feed: Feed) -> None:
    client, server = established()
    for who, event, body in STEPS:
        sender, receiver = (client, server) if who == "c" else (server, client)
        data = sender.send(event)
        if body:
            sender.body_sent(len(body))
        assert feed(receiver, data + body) == ([event], body)


class TestFrames:
    """Every frame round-trips, whole or a byte at a time; bodies stay out of the codec."""

    def test_every_frame_round_trips(self) -> None:
        converse(whole)

    def test_a_byte_at_a_time(self) -> None:
        converse(byte_at_a_time)

    def test_handshake_frames_a_byte_at_a_time(self) -> None:
        client, server = conn(Role.CLIENT), conn(Role.SERVER)
        assert byte_at_a_time(server, client.send(Hello("client-a"))) == ([Hello("client-a")], b"")
        assert byte_at_a_time(client, server.send(Welcome("server-b"))) == ([Welcome("server-b")], b"")
        assert byte_at_a_time(server, client.send(Auth())) == ([Auth()], b"")

    def test_the_wire_format(self) -> None:
        client, server = established()
        interested = client.send(Interested(D1, 10))
        assert interested == struct.pack(">IB", 38, 0x10) + raw_digest() + struct.pack(">I", 10)
        deliver(interested, server)
        assert server.send(Bitfield.of(D1, 10, [0, 9])) == frame(
            0x12, raw_digest() + struct.pack(">I", 10) + b"\x80\x40"
        )
        assert client.send(Request(D1, 9)) == frame(0x20, raw_digest() + struct.pack(">I", 9))

    def test_the_body_is_left_to_the_io_layer(self) -> None:
        client, server = established()
        deliver(client.send(Interested(D1, 10)), server)
        deliver(client.send(Request(D1, 0)), server)
        header = server.send(Piece(D1, 0, 1 << 20))
        assert len(header) == 4 + 1 + 33 + 8  # a header, never the body
        assert server.body_owed == 1 << 20
        with pytest.raises(LocalProtocolError, match="body bytes owed"):
            server.send(Have(D1, 0))
        server.body_sent(1 << 20)
        # the receiver: header plus the first 10 body bytes arrive in one read
        client.receive_data(header + b"x" * 10)
        assert client.next_event() == Piece(D1, 0, 1 << 20)
        assert client.next_event() is BODY
        assert client.body_remaining == 1 << 20
        with pytest.raises(LocalProtocolError, match="take the buffered body bytes first"):
            client.body_received(5)
        assert client.take_body() == b"x" * 10
        client.body_received((1 << 20) - 10)  # recv_into'd straight from the socket
        assert client.body_remaining == 0
        assert client.next_event() is NEED_DATA

    def test_more_body_reported_than_owed(self) -> None:
        client, _server = established()
        with pytest.raises(LocalProtocolError, match="0 expected"):
            client.body_received(1)
        with pytest.raises(LocalProtocolError, match="0 owed"):
            client.body_sent(1)

    def test_a_negative_take_is_refused(self) -> None:
        client, server = established()
        deliver(client.send(Interested(D1, 10)), server)
        deliver(client.send(Request(D1, 0)), server)
        data = server.send(Piece(D1, 0, 4)) + b"body"
        server.body_sent(4)
        client.receive_data(data + server.send(Close("done")))
        assert client.next_event() == Piece(D1, 0, 4)
        assert client.next_event() is BODY
        with pytest.raises(LocalProtocolError, match="-1 body bytes"):
            client.take_body(-1)  # once took the CLOSE frame's bytes as body, and 1 more owed
        assert client.take_body(0) == b""
        assert client.take_body() == b"body"
        assert client.next_event() == Close("done")

    def test_bitfield_helpers(self) -> None:
        bf = Bitfield.of(D1, 12, [0, 7, 8, 11])
        assert bf.bits == bytes([0b10000001, 0b10010000])
        assert list(bf.indices()) == [0, 7, 8, 11]
        assert bf.has(7)
        assert not bf.has(1)
        assert not bf.has(12)
        with pytest.raises(ValueError, match="outside"):
            Bitfield.of(D1, 3, [3])


class TestMalformed:
    """Bounded, well-formed frames only; the first bad byte closes the connection."""

    def test_an_oversized_frame_is_refused_from_its_length_alone(self) -> None:
        _client, server = established(max_frame=1024)
        server.receive_data(struct.pack(">I", 1025))  # nothing more needs to arrive
        with pytest.raises(RemoteProtocolError, match="frame of 1025 bytes"):
            server.next_event()
        assert server.state is State.CLOSED

    def test_an_empty_frame_is_refused(self) -> None:
        _client, server = established()
        server.receive_data(struct.pack(">I", 0))
        with pytest.raises(RemoteProtocolError, match="frame of 0 bytes"):
            server.next_event()

    def test_a_partial_frame_waits_for_more(self) -> None:
        client, server = established()
        data = client.send(Interested(D1, 10))
        assert deliver(data[:-1], server) == [NEED_DATA]
        assert deliver(data[-1:], server) == [Interested(D1, 10), NEED_DATA]

    @pytest.mark.parametrize("cut", [1, 3, 4, 20])
    def test_a_truncated_frame_then_eof(self, cut: int) -> None:
        client, server = established()
        server.receive_data(client.send(Interested(D1, 10))[:cut])
        server.receive_data(b"")
        with pytest.raises(RemoteProtocolError, match="truncated"):
            server.next_event()

    def test_eof_inside_a_body(self) -> None:
        client, server = established()
        deliver(client.send(Interested(D1, 10)), server)
        deliver(client.send(Request(D1, 0)), server)
        client.receive_data(server.send(Piece(D1, 0, 100)) + b"x" * 40)
        client.receive_data(b"")
        assert client.next_event() == Piece(D1, 0, 100)
        assert client.take_body() == b"x" * 40
        with pytest.raises(RemoteProtocolError, match="60 piece body bytes missing"):
            client.next_event()

    def test_eof_at_a_frame_boundary_is_a_clean_close(self) -> None:
        client, server = established()
        server.receive_data(client.send(Interested(D1, 10)))
        server.receive_data(b"")
        assert drain(server) == [Interested(D1, 10), ConnectionClosed()]
        assert server.state is State.CLOSED
        with pytest.raises(LocalProtocolError, match="after end of stream"):
            server.receive_data(b"more")

    @pytest.mark.parametrize(
        ("data", "needle"),
        [
            (frame(0x7F, b""), "unknown frame type 0x7f"),
            (frame(0x10, raw_digest() + struct.pack(">I", 10) + b"\0"), "1 trailing bytes"),
            (frame(0x10, raw_digest()[:20]), "INTERESTED frame too short"),
            (frame(0x10, b"\x09" + b"\0" * 32), "unknown digest algorithm 9"),
            (frame(0x30, b"\0"), "KEEPALIVE frame has 1 trailing bytes"),
            (frame(0x31, b"\xff\xfe"), "not UTF-8"),
            (frame(0x31, b"x" * 256), "longer than 255"),
            (frame(0x20, raw_digest() + b"\0\0"), "REQUEST frame too short"),
        ],
    )
    def test_malformed_frames(self, data: bytes, needle: str) -> None:
        _client, server = established()
        server.receive_data(data)
        with pytest.raises(RemoteProtocolError, match=needle):
            server.next_event()

    @pytest.mark.parametrize(
        ("pieces", "bits", "needle"),
        [(10, b"\x80", "1 bytes for 10 pieces"), (10, b"\x80\x20", "spare bits"), (0, b"", "0 pieces")],
    )
    def test_malformed_bitfields(self, pieces: int, bits: bytes, needle: str) -> None:
        client, _server = established()
        client.send(Interested(D1, 10))
        client.receive_data(frame(0x12, raw_digest() + struct.pack(">I", pieces) + bits))
        with pytest.raises(RemoteProtocolError, match=needle):
            client.next_event()

    def test_a_malformed_digest_is_not_sent(self) -> None:
        client, _server = established()
        with pytest.raises(LocalProtocolError, match="invalid digest"):
            client.send(Interested("sha256:nothex", 1))


class TestRules:
    """Availability is pushed on interest; pieces only answer requests; bounds hold."""

    def test_have_before_bitfield(self) -> None:
        client, server = established()
        deliver(client.send(Interested(D1, 10)), server)
        client.receive_data(frame(0x13, raw_digest() + struct.pack(">I", 0)))
        with pytest.raises(RemoteProtocolError, match="before its BITFIELD"):
            client.next_event()
        with pytest.raises(LocalProtocolError, match="before a BITFIELD"):
            server.send(Have(D1, 0))

    def test_have_outside_the_blob(self) -> None:
        client, server = established()
        deliver(client.send(Interested(D1, 10)), server)
        deliver(server.send(Bitfield.of(D1, 10, [])), client)
        with pytest.raises(LocalProtocolError, match="piece 10 of a 10-piece"):
            server.send(Have(D1, 10))
        client.receive_data(frame(0x13, raw_digest() + struct.pack(">I", 10)))
        with pytest.raises(RemoteProtocolError, match="piece 10 of a 10-piece"):
            client.next_event()

    def test_availability_we_did_not_ask_for(self) -> None:
        client, server = established()
        with pytest.raises(LocalProtocolError, match="answers no INTERESTED"):
            server.send(Bitfield.of(D1, 1, [0]))
        client.receive_data(frame(0x12, raw_digest() + struct.pack(">I", 8) + b"\xff"))
        with pytest.raises(RemoteProtocolError, match="did not ask about"):
            client.next_event()

    def test_a_second_bitfield(self) -> None:
        client, server = established()
        deliver(client.send(Interested(D1, 10)), server)
        bitfield = server.send(Bitfield.of(D1, 10, [1]))
        with pytest.raises(LocalProtocolError, match="answers no INTERESTED"):
            server.send(Bitfield.of(D1, 10, [1]))
        client.receive_data(bitfield + bitfield)
        assert client.next_event() == Bitfield.of(D1, 10, [1])
        with pytest.raises(RemoteProtocolError, match="second BITFIELD"):
            client.next_event()

    def test_availability_racing_not_interested_is_dropped(self) -> None:
        client, server = established()
        deliver(client.send(Interested(D1, 10)), server)
        bitfield = server.send(Bitfield.of(D1, 10, [1]))
        deliver(bitfield, client)
        have = server.send(Have(D1, 2))  # on its way while the client loses interest
        client.send(NotInterested(D1))
        assert deliver(have, client) == [NEED_DATA]

    def test_interest_twice_and_retraction_without_interest(self) -> None:
        client, server = established()
        data = client.send(Interested(D1, 10))
        with pytest.raises(LocalProtocolError, match="already interested"):
            client.send(Interested(D1, 10))
        with pytest.raises(LocalProtocolError, match="not interested"):
            client.send(NotInterested(D2))
        server.receive_data(data + data)
        assert server.next_event() == Interested(D1, 10)
        with pytest.raises(RemoteProtocolError, match="INTERESTED in sha256:111111111111 twice"):
            server.next_event()

    def test_not_interested_without_interest(self) -> None:
        _client, server = established()
        server.receive_data(frame(0x11, raw_digest()))
        with pytest.raises(RemoteProtocolError, match="without INTERESTED"):
            server.next_event()

    def test_a_request_needs_interest(self) -> None:
        client, server = established()
        with pytest.raises(LocalProtocolError, match="without INTERESTED"):
            client.send(Request(D1, 0))
        server.receive_data(frame(0x20, raw_digest() + struct.pack(">I", 0)))
        with pytest.raises(RemoteProtocolError, match="without INTERESTED"):
            server.next_event()

    def test_request_twice(self) -> None:
        client, server = established()
        deliver(client.send(Interested(D1, 10)), server)
        request = client.send(Request(D1, 0))
        with pytest.raises(LocalProtocolError, match="already requested"):
            client.send(Request(D1, 0))
        server.receive_data(request + request)
        assert server.next_event() == Request(D1, 0)
        with pytest.raises(RemoteProtocolError, match="piece 0 twice"):
            server.next_event()

    def test_requests_in_flight_are_bounded(self) -> None:
        client, server = established(max_requests=3)
        deliver(client.send(Interested(D1, 10)), server)
        for i in range(3):
            assert deliver(client.send(Request(D1, i)), server) == [Request(D1, i), NEED_DATA]
        server.receive_data(client.send(Request(D1, 3)))
        with pytest.raises(RemoteProtocolError, match="more than 3 requests in flight"):
            server.next_event()

    def test_answers_free_request_slots(self) -> None:
        client, server = established(max_requests=1)
        deliver(client.send(Interested(D1, 10)), server)
        for i in range(3):
            deliver(client.send(Request(D1, i)), server)
            deliver(server.send(Reject(D1, i)), client)

    def test_a_request_beyond_the_blob(self) -> None:
        client, server = established()
        deliver(client.send(Interested(D1, 10)), server)
        with pytest.raises(LocalProtocolError, match="piece 10 of a 10-piece"):
            client.send(Request(D1, 10))
        server.receive_data(frame(0x20, raw_digest() + struct.pack(">I", 10)))
        with pytest.raises(RemoteProtocolError, match="piece 10 of a 10-piece"):
            server.next_event()

    def test_the_bitfield_answers_with_the_count_asked_about(self) -> None:
        client, server = established()
        deliver(client.send(Interested(D1, 10)), server)
        with pytest.raises(LocalProtocolError, match="9 pieces, the peer asked about 10"):
            server.send(Bitfield.of(D1, 9, []))
        client.receive_data(frame(0x12, raw_digest() + struct.pack(">I", 9) + b"\0\0"))
        with pytest.raises(RemoteProtocolError, match="9 pieces, we asked about 10"):
            client.next_event()

    def test_a_peer_holding_nothing_answers_at_once(self) -> None:
        client, server = established()
        assert deliver(client.send(Interested(D1, 10)), server) == [Interested(D1, 10), NEED_DATA]
        assert deliver(server.send(Bitfield.of(D1, 10, [])), client) == [Bitfield(D1, 10, b"\0\0"), NEED_DATA]

    def test_interest_in_no_pieces(self) -> None:
        client, server = established()
        with pytest.raises(LocalProtocolError, match="0 pieces"):
            client.send(Interested(D1, 0))
        server.receive_data(frame(0x10, raw_digest() + struct.pack(">I", 0)))
        with pytest.raises(RemoteProtocolError, match="0 pieces"):
            server.next_event()

    def test_have_to_a_peer_not_interested(self) -> None:
        client, server = established()
        deliver(client.send(Interested(D1, 10)), server)
        deliver(server.send(Bitfield.of(D1, 10, [])), client)
        deliver(client.send(NotInterested(D1)), server)
        with pytest.raises(LocalProtocolError, match="the peer is not interested"):
            server.send(Have(D1, 1))

    def test_a_piece_or_reject_nobody_asked_for(self) -> None:
        client, server = established()
        deliver(client.send(Interested(D1, 10)), server)
        with pytest.raises(LocalProtocolError, match="answers no request"):
            server.send(Piece(D1, 0, 10))
        with pytest.raises(LocalProtocolError, match="answers no request"):
            server.send(Reject(D1, 0))
        client.receive_data(frame(0x21, raw_digest() + struct.pack(">II", 0, 10)))
        with pytest.raises(RemoteProtocolError, match="nobody asked for"):
            client.next_event()

    def test_a_reject_nobody_asked_for(self) -> None:
        client, _server = established()
        client.receive_data(frame(0x23, raw_digest() + struct.pack(">I", 0)))
        with pytest.raises(RemoteProtocolError, match="REJECT of piece 0 nobody asked for"):
            client.next_event()

    def test_a_piece_too_big(self) -> None:
        client, server = established(max_piece=1000)
        deliver(client.send(Interested(D1, 10)), server)
        deliver(client.send(Request(D1, 0)), server)
        client.receive_data(frame(0x21, raw_digest() + struct.pack(">II", 0, 1001)))
        with pytest.raises(RemoteProtocolError, match="1001 bytes"):
            client.next_event()
        with pytest.raises(LocalProtocolError, match="1001 bytes"):
            server.send(Piece(D1, 0, 1001))

    @pytest.mark.parametrize(
        ("index", "length"), [(0, 64 << 20), (0, (2 << 20) - 1), (62, 2 << 20), (62, (1 << 20) - 1)]
    )
    def test_a_piece_that_is_not_the_length_asked_for(self, index: int, length: int) -> None:
        """Defect 4 (issue 16): the PIECE header is refused before a body byte is read or a
        buffer allocated, when we said the blob's size (125 MiB: 63 pieces of 2 MiB, the last
        one 1 MiB)."""
        client, server = established()
        deliver(client.send(Interested(D1, 63, size=125 << 20)), server)
        deliver(client.send(Request(D1, index)), server)
        client.receive_data(frame(0x21, raw_digest() + struct.pack(">II", index, length)))
        with pytest.raises(RemoteProtocolError, match=f"PIECE {index} of {length} bytes, the piece is"):
            client.next_event()

    def test_a_piece_of_the_right_length(self) -> None:
        client, server = established()
        deliver(client.send(Interested(D1, 63, size=125 << 20)), server)
        deliver(client.send(Request(D1, 62)), server)
        assert deliver(server.send(Piece(D1, 62, 1 << 20)), client) == [Piece(D1, 62, 1 << 20), BODY]

    def test_a_size_that_does_not_match_the_piece_count(self) -> None:
        client, _server = established()
        with pytest.raises(LocalProtocolError, match="does not have 10 pieces"):
            client.send(Interested(D1, 10, size=64 << 20))

    def test_a_cancel_racing_the_piece_is_dropped(self) -> None:
        client, server = established()
        deliver(client.send(Interested(D1, 10)), server)
        deliver(client.send(Request(D1, 0)), server)
        piece = server.send(Piece(D1, 0, 3))
        server.body_sent(3)
        cancel = client.send(Cancel(D1, 0))  # crosses the piece on the wire
        assert deliver(cancel, server) == [NEED_DATA]
        assert deliver(piece + b"abc", client) == [Piece(D1, 0, 3), BODY]  # still read off the stream
        assert client.take_body() == b"abc"

    def test_a_cancel_in_time_reaches_the_sender(self) -> None:
        client, server = established()
        deliver(client.send(Interested(D1, 10)), server)
        deliver(client.send(Request(D1, 0)), server)
        assert deliver(client.send(Cancel(D1, 0)), server) == [Cancel(D1, 0), NEED_DATA]
        with pytest.raises(LocalProtocolError, match="answers no request"):
            server.send(Piece(D1, 0, 3))
        with pytest.raises(LocalProtocolError, match="not a request in flight"):
            client.send(Cancel(D1, 0))

    def test_nothing_after_their_close(self) -> None:
        client, server = established()
        server.receive_data(client.send(Close("done")) + frame(0x10, raw_digest()))
        assert server.next_event() == Close("done")
        assert server.state is State.CLOSED
        with pytest.raises(RemoteProtocolError, match="INTERESTED after CLOSE"):
            server.next_event()

    def test_after_our_close_what_was_in_flight_is_dropped(self) -> None:
        client, server = established()
        interested = client.send(Interested(D1, 10))
        server.send(Close("bye"))
        with pytest.raises(LocalProtocolError, match="closed"):
            server.send(Interested(D2, 3))
        server.receive_data(interested)
        server.receive_data(b"")
        assert drain(server) == [ConnectionClosed()]

    def test_connection_closed_is_not_sent(self) -> None:
        client, _server = established()
        with pytest.raises(LocalProtocolError, match="close the socket"):
            client.send(ConnectionClosed())


class TestKeepalive:
    """One keepalive per idle interval at most; a flood closes the connection."""

    def test_due_only_after_an_idle_interval(self) -> None:
        clock = Clock()
        client, _server = established(clock)
        assert not client.keepalive_due()
        with pytest.raises(LocalProtocolError, match="not due"):
            client.send(KeepAlive())
        clock.now += 14.9
        assert not client.keepalive_due()
        clock.now += 0.1
        assert client.keepalive_due()
        client.send(KeepAlive())
        assert not client.keepalive_due()  # sending anything restarts the interval

    def test_body_bytes_count_as_traffic(self) -> None:
        clock = Clock()
        client, server = established(clock)
        deliver(client.send(Interested(D1, 10)), server)
        deliver(client.send(Request(D1, 0)), server)
        server.send(Piece(D1, 0, 10))
        clock.now += 20
        assert not server.keepalive_due()  # a body is still owed
        server.body_sent(10)
        assert not server.keepalive_due()
        clock.now += 15
        assert server.keepalive_due()

    def test_a_burst_after_a_stall_passes_a_flood_does_not(self) -> None:
        clock = Clock()
        _client, server = established(clock)
        ka = frame(0x30, b"")
        server.receive_data(ka * 4)  # a starved reader finds four at once
        assert drain(server) == [KeepAlive()] * 4 + [NEED_DATA]
        server.receive_data(ka)
        with pytest.raises(RemoteProtocolError, match="keepalive flood"):
            server.next_event()

    def test_keepalives_at_the_interval_pass_forever(self) -> None:
        clock = Clock()
        _client, server = established(clock)
        for _ in range(100):
            clock.now += 7.5  # twice as often as the sender may: still within the refill
            assert deliver(frame(0x30, b""), server) == [KeepAlive(), NEED_DATA]

    def test_silence(self) -> None:
        clock = Clock()
        client, server = established(clock)
        clock.now += 44
        assert server.silent_for() == pytest.approx(44)
        server.receive_data(client.send(Interested(D1, 10))[:3])
        assert server.silent_for() == 0


class TestRenewedInterest:
    """Taking an interest back and renewing it while the peer's answers to the first are
    still on the way must not cut an honest peer off: the stale BITFIELD and HAVEs are dropped,
    the answer to the renewed interest is taken (both used to end the connection)."""

    def test_a_stale_bitfield_is_dropped_and_the_new_one_taken(self) -> None:
        client, server = established()
        first = client.send(Interested(D1, 10))
        gone = client.send(NotInterested(D1))
        again = client.send(Interested(D1, 10))
        assert deliver(first, server) == [Interested(D1, 10), NEED_DATA]
        old = server.send(Bitfield.of(D1, 10, [1]))  # answers the first interest
        old_have = server.send(Have(D1, 2))
        assert deliver(gone + again, server) == [NotInterested(D1), Interested(D1, 10), NEED_DATA]
        new = server.send(Bitfield.of(D1, 10, [1, 2]))
        assert deliver(old + old_have + new, client) == [Bitfield.of(D1, 10, [1, 2]), NEED_DATA]
        assert deliver(server.send(Have(D1, 3)), client) == [Have(D1, 3), NEED_DATA]

    def test_a_bitfield_received_before_the_retraction_owes_nothing(self) -> None:
        client, server = established()
        deliver(client.send(Interested(D1, 4)), server)
        deliver(server.send(Bitfield.of(D1, 4, [0])), client)
        late_have = server.send(Have(D1, 1))
        deliver(client.send(NotInterested(D1)) + client.send(Interested(D1, 4)), server)
        answer = server.send(Bitfield.of(D1, 4, [0, 1]))
        assert deliver(late_have + answer, client) == [Bitfield.of(D1, 4, [0, 1]), NEED_DATA]
        client.receive_data(frame(0x12, raw_digest() + struct.pack(">I", 4) + b"\x00"))
        with pytest.raises(RemoteProtocolError, match="second BITFIELD"):
            client.next_event()


class TestBitfieldBound:
    """A piece count no BITFIELD frame could carry is refused on both sides (answering it
    would allocate up to 512 MiB)."""

    def test_interest_beyond_a_frames_bitfield(self) -> None:
        client, server = established()
        most = server.max_bitfield_pieces
        assert most == (64 << 10) * 8 - 70 * 8
        with pytest.raises(LocalProtocolError, match="pieces"):
            client.send(Interested(D1, most + 1))
        server.receive_data(frame(0x10, raw_digest() + struct.pack(">I", 1 << 31)))
        with pytest.raises(RemoteProtocolError, match="a bitfield holds"):
            server.next_event()

    def test_the_largest_bitfield_fits_a_frame(self) -> None:
        client, server = established()
        most = server.max_bitfield_pieces
        assert deliver(client.send(Interested(D2, most)), server)[0] == Interested(D2, most)
        data = server.send(Bitfield.of(D2, most, range(0, most, 7)))
        assert len(data) - 4 <= server.max_frame
        assert deliver(data, client)[0] == Bitfield.of(D2, most, range(0, most, 7))
