"""Wire protocol v2 under hypothesis: any chunking gives the same events; any bytes give at worst a ProtocolError."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.p2p.wire import (
    BODY,
    NEED_DATA,
    Auth,
    Bitfield,
    Cancel,
    Connection,
    ConnectionClosed,
    Event,
    Have,
    Hello,
    Interested,
    Piece,
    ProtocolError,
    Reject,
    Request,
    Role,
    Signal,
    Welcome,
)

SECRET = b"k" * 32
DIGEST = "sha256:" + "ab" * 32


def nonces(start: int) -> Callable[[int], bytes]:
    counter = itertools.count(start)
    return lambda n: next(counter).to_bytes(n, "big")


def pair() -> tuple[Connection, Connection]:
    client = Connection(Role.CLIENT, secret=SECRET, clock=lambda: 0.0, nonce=nonces(1))
    server = Connection(Role.SERVER, secret=SECRET, clock=lambda: 0.0, nonce=nonces(99))
    server.receive_data(client.send(Hello("c")))
    assert server.next_event() == Hello("c")
    client.receive_data(server.send(Welcome("s")))
    assert client.next_event() == Welcome("s")
    server.receive_data(client.send(Auth()))
    assert server.next_event() == Auth()
    return client, server


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in itertools.pairwise([0, *points, len(data)]) if b > a]


def feed(to: Connection, chunks: list[bytes]) -> tuple[list[Event], list[bytes]]:
    """Events and each piece's body, taking bodies as the I/O layer would."""
    events: list[Event] = []
    bodies: list[bytes] = []
    for chunk in chunks:
        to.receive_data(chunk)
        while (ev := to.next_event()) is not NEED_DATA:
            if ev is BODY:
                if not (more := to.take_body()):
                    break
                bodies[-1] += more
                continue
            assert not isinstance(ev, Signal)
            events.append(ev)
            if isinstance(ev, Piece):
                bodies.append(b"")
    return events, bodies


@st.composite
def conversations(draw: st.DrawFn) -> tuple[int, set[int], list[int], list[int], set[int], dict[int, bytes]]:
    pieces = draw(st.integers(1, 40))
    held = draw(st.sets(st.integers(0, pieces - 1)))
    haves = draw(st.lists(st.integers(0, pieces - 1), unique=True).map(lambda xs: [x for x in xs if x not in held]))
    requests = draw(st.lists(st.integers(0, pieces - 1), unique=True, max_size=16))
    cancelled = draw(st.sets(st.sampled_from(requests))) if requests else set()
    answered = [i for i in requests if i not in cancelled]
    bodies = {i: draw(st.binary(min_size=1, max_size=50)) for i in answered if draw(st.booleans())}
    return pieces, held, haves, requests, cancelled, bodies


@settings(max_examples=150, deadline=None)
@given(conversations(), st.lists(st.integers(0, 10_000), max_size=30), st.lists(st.integers(0, 10_000), max_size=30))
def test_any_chunking_gives_the_same_events(
    conv: tuple[int, set[int], list[int], list[int], set[int], dict[int, bytes]],
    cuts_up: list[int],
    cuts_down: list[int],
) -> None:
    pieces, held, haves, requests, cancelled, bodies = conv
    client, server = pair()
    up = client.send(Interested(DIGEST, pieces))
    up += b"".join(client.send(Request(DIGEST, i)) for i in requests)
    up += b"".join(client.send(Cancel(DIGEST, i)) for i in requests if i in cancelled)
    got_up, _ = feed(server, split(up, cuts_up))
    want_up: list[Event] = [Interested(DIGEST, pieces), *(Request(DIGEST, i) for i in requests)]
    want_up += [Cancel(DIGEST, i) for i in requests if i in cancelled]
    assert got_up == want_up

    down = server.send(Bitfield.of(DIGEST, pieces, held))
    down += b"".join(server.send(Have(DIGEST, i)) for i in haves)
    want_down: list[Event] = [Bitfield.of(DIGEST, pieces, held), *(Have(DIGEST, i) for i in haves)]
    for i in requests:
        if i in cancelled:
            continue
        if i in bodies:
            down += server.send(Piece(DIGEST, i, len(bodies[i]))) + bodies[i]
            server.body_sent(len(bodies[i]))
            want_down.append(Piece(DIGEST, i, len(bodies[i])))
        else:
            down += server.send(Reject(DIGEST, i))
            want_down.append(Reject(DIGEST, i))
    got_down, got_bodies = feed(client, split(down, cuts_down))
    assert got_down == want_down
    assert got_bodies == [bodies[i] for i in requests if i in bodies and i not in cancelled]


def survive(to: Connection, data: bytes) -> None:
    """Feed ``data`` then EOF: events or a ProtocolError, nothing else, and nothing hangs."""
    try:
        to.receive_data(data)
        to.receive_data(b"")
        for _ in range(len(data) + 2):
            ev = to.next_event()
            if ev is BODY:
                to.take_body()
            elif isinstance(ev, ConnectionClosed):
                return
        raise AssertionError("the codec made no progress")
    except ProtocolError:
        return


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_at_a_fresh_server(data: bytes) -> None:
    survive(Connection(Role.SERVER, secret=SECRET, nonce=nonces(5)), data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_at_an_established_connection(data: bytes) -> None:
    client, _server = pair()
    client.send(Interested(DIGEST, 9))
    client.send(Request(DIGEST, 0))
    survive(client, data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_corrupted_stream(data: st.DataObject) -> None:
    client, server = pair()
    server.receive_data(client.send(Interested(DIGEST, 9)) + client.send(Request(DIGEST, 1)))
    assert [server.next_event(), server.next_event()] == [Interested(DIGEST, 9), Request(DIGEST, 1)]
    stream = bytearray(server.send(Bitfield.of(DIGEST, 9, [1, 2])) + server.send(Have(DIGEST, 5)))
    stream += server.send(Piece(DIGEST, 1, 4)) + b"body"
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(stream) - 1))
        stream[at] = data.draw(st.integers(0, 255))
    survive(client, bytes(stream))
