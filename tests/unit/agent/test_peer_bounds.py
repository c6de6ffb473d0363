"""What one peer can make an agent hold: a real hub on loopback, driven by raw peers that
break the rules a real peer keeps (they never read, cancel what they ask for, lie about
piece lengths). Each class is one defect of the peer-wire review (issue 16); each test
failed on the code before its fix."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from shoal.agent.metrics import AgentMetrics
from shoal.agent.peer_channel import tls_handshake
from shoal.agent.peer_hub import HubConfig, PeerHub
from shoal.agent.peer_link import PieceBody, answer, peer_secret
from shoal.core.digest import Digest
from shoal.p2p import wire
from shoal.p2p.ratelimit import TokenBucket
from shoal.p2p.tls import TlsDirectory
from shoal.p2p.wire.codec import _T, _digest, _frame, _u32
from shoal.store.blobstore import BlobStore
from shoal.testing.pki import TestCA

MiB = 1 << 20
SECRET = peer_secret("token")
HUB_ID = "127.0.0.1:7000"
LINKS_PER_ADDRESS = 4
"""the default of ``swarm.peer_links_per_address``"""


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    s = BlobStore(tmp_path / "cache", ttl=3600.0, max_size=None)
    s.open()
    return s


async def cached_blob(store: BlobStore, data: bytes) -> Digest:
    digest = Digest.of(data)
    partial = store.begin(digest, len(data))
    await partial.write(0, data)
    partial.finish()
    await store.commit(partial)
    return digest


@pytest.fixture
async def hub(store: BlobStore) -> AsyncIterator[PeerHub]:
    h = PeerHub(HubConfig(peer_id=HUB_ID, secret=SECRET), store, {}, AgentMetrics(), TokenBucket(0))
    h.start()
    yield h
    await h.close()


def connect(*, rcvbuf: int | None = None, source: str = "127.0.0.1") -> tuple[socket.socket, socket.socket]:
    """A loopback connection from ``source``: (client end, server end)."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.socket()
    if rcvbuf is not None:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    client.bind((source, 0))
    client.connect(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return client, server


async def join(
    hub: PeerHub, peer_id: str = "127.0.0.1:5555", *, rcvbuf: int | None = None, source: str = "127.0.0.1"
) -> socket.socket:
    """A raw peer that completed the handshake with ``hub`` (as the agent's port hands it over)."""
    client, server = connect(rcvbuf=rcvbuf, source=source)
    conn = wire.Connection(wire.Role.CLIENT, secret=SECRET)
    client.sendall(conn.send(wire.Hello(peer_id)))
    hub.accept(server, server.recv(1))

    def finish() -> None:
        client.settimeout(5)
        while (event := conn.next_event()) is wire.NEED_DATA:
            conn.receive_data(client.recv(4096))
        assert isinstance(event, wire.Welcome), f"{peer_id} from {source}: {event}"
        client.sendall(conn.send(wire.Auth()))

    try:
        await asyncio.to_thread(finish)
    except BaseException:
        client.close()
        raise
    return client


def link_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("peer-"))


def links_from(hub: PeerHub, prefix: str) -> int:
    return sum(1 for link in hub._all if link.peer_id.startswith(prefix) and not link.closed)


def raw(kind: _T, digest: str, *numbers: int) -> bytes:
    return _frame(kind, _digest(digest) + b"".join(_u32(n, "n") for n in numbers))


async def until(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


class TestCancelledRequestsHoldNothing:
    """Defect 1: a peer that never reads and loops REQUEST+CANCEL on a cached blob made the
    agent open the blob once per request, and a cancel freed the request's slot but not the
    queued file: descriptors 13 -> 20,000 in 2 s."""

    async def test_descriptors_stay_flat(self, hub: PeerHub, store: BlobStore) -> None:
        digest = str(await cached_blob(store, os.urandom(3 * MiB)))
        client = await join(hub, rcvbuf=4096)
        await until(lambda: len(hub._all) == 1)
        (link,) = hub._all
        # one piece that is never cancelled keeps the writer blocked on a peer that does not read
        client.sendall(raw(_T.INTERESTED, digest, 3) + raw(_T.REQUEST, digest, 1))
        await asyncio.sleep(0.3)  # the writer took it and is stuck sending it
        before = open_descriptors()
        for _ in range(20):
            client.sendall((raw(_T.REQUEST, digest, 0) + raw(_T.CANCEL, digest, 0)) * 100)
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # every frame was handled
        assert open_descriptors() - before < 8
        assert not link.closed
        client.close()


class Download:
    """A PieceSink that records what its parent did."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.has: list[int] = []
        self.arrived: list[int] = []
        self.lost: list[str] = []

    def parent_has(self, peer_id: str, pieces: Iterable[int]) -> None:
        self.has.extend(pieces)

    def piece_arrived(self, peer_id: str, body: PieceBody) -> None:
        self.arrived.append(body.index)

    def piece_rejected(self, peer_id: str, index: int) -> None:
        pass

    def parent_lost(self, peer_id: str, reason: str) -> None:
        self.lost.append(reason)


class LyingParent:
    """A parent that answers every REQUEST with a PIECE header of ``length`` bytes, then stalls."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        sock, _ = self.listener.accept()
        with sock:
            _, conn = answer(sock, sock.recv(1), self.address, SECRET, wire.NonceLog(), lambda _, __: None)
            sock.settimeout(0.2)
            while not self.stop.is_set():
                event = conn.next_event()
                if event is wire.NEED_DATA:
                    with contextlib.suppress(TimeoutError):
                        conn.receive_data(sock.recv(65536))
                    continue
                if isinstance(event, wire.Interested):
                    sock.sendall(conn.send(wire.Bitfield.of(event.digest, event.pieces, range(event.pieces))))
                elif isinstance(event, wire.Request):
                    header = _frame(_T.PIECE, _digest(event.digest) + _u32(event.index, "i") + _u32(self.length, "n"))
                    sock.sendall(header)  # and no body: the child waits for it
                elif not isinstance(event, wire.KeepAlive):
                    return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.listener.close()


class TestALongerPieceThanAskedFor:
    """Defect 4: a parent answered a 2 MiB piece with a 64 MiB PIECE header and stalled; the
    child allocated the full length first (6 such parents: RSS 45 -> 432 MiB)."""

    async def test_closes_the_link_before_anything_is_allocated(self, hub: PeerHub) -> None:
        size = 128 * MiB  # 64 pieces of 2 MiB
        parent = LyingParent(64 * MiB)
        digest = Digest.of(b"a blob of 128 MiB")
        download = Download(size)
        hub.register(digest, download)
        try:
            await hub.add_parent(digest, 64, parent.address, parent.address)
            await until(lambda: download.has)
            tracemalloc.start()
            assert hub.request(parent.address, digest, 0)
            await until(lambda: download.lost, timeout=3.0)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert "protocol error" in download.lost[0]
            assert peak < 4 * MiB
        finally:
            tracemalloc.stop()
            parent.close()


class Parent:
    """A peer that answers one handshake as ``peer_id`` and then keeps the link open."""

    def __init__(self, peer_id: str = "127.0.0.9:1") -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.peer_id = peer_id
        self.sock: socket.socket | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        sock, _ = self.listener.accept()
        self.sock = sock
        answer(sock, sock.recv(1), self.peer_id, SECRET, wire.NonceLog(), lambda _, __: None)

    def close(self) -> None:
        self.thread.join(5)
        self.listener.close()
        if self.sock is not None:
            self.sock.close()


class TestHandshakeFlood:
    """Defect 2: with no secret at all, 64 connections that each sent one byte 0x00 held every
    handshake slot for 10 s; real peers were refused."""

    async def test_a_flood_from_one_address_does_not_delay_a_peer_from_another(self, hub: PeerHub) -> None:
        flood = []
        for _ in range(200):
            client, server = connect(source="127.0.0.1")
            client.sendall(b"\x00")
            hub.accept(server, server.recv(1))
            flood.append(client)
        try:
            started = time.monotonic()
            real = await join(hub, "127.0.0.3:5555", source="127.0.0.3")
            assert time.monotonic() - started < 1.0
            await until(lambda: links_from(hub, "127.0.0.3:") == 1)
            real.close()
        finally:
            for client in flood:
                client.close()

    async def test_a_silent_connection_ends_quickly_and_holds_no_thread(self, hub: PeerHub) -> None:
        threads = threading.active_count()
        clients = []
        for _ in range(4):
            client, server = connect(source="127.0.0.4")
            client.sendall(b"\x00")
            hub.accept(server, server.recv(1))
            clients.append(client)
        await asyncio.sleep(0.2)
        assert threading.active_count() == threads
        started = time.monotonic()
        for client in clients:
            client.settimeout(4)
            assert await asyncio.to_thread(client.recv, 1) == b""  # closed by the agent
            client.close()
        assert time.monotonic() - started < 3.0


class TestLinksPerAddress:
    """Defect 3: one secret holder opened 1,024 links under different peer ids (any port of its
    own address passes the id check): threads 43 -> 2,091, and the agent could not dial its
    own parents."""

    async def test_one_address_gets_a_few_links_and_the_agent_still_dials(self, store: BlobStore) -> None:
        config = HubConfig(peer_id=HUB_ID, secret=SECRET, max_links=16)
        hub = PeerHub(config, store, {}, AgentMetrics(), TokenBucket(0))
        hub.start()
        clients = []
        try:
            for i in range(12):  # a handful of addresses, several ids each
                for n in range(4):
                    source = f"127.0.0.{20 + i}"
                    with contextlib.suppress(AssertionError, OSError):
                        clients.append(await join(hub, f"{source}:{1000 + n}", source=source))
            await asyncio.sleep(0.3)
            per_address = [links_from(hub, f"127.0.0.{20 + i}:") for i in range(12)]
            assert max(per_address) <= LINKS_PER_ADDRESS
            assert sum(per_address) <= 12  # a quarter of the 16 stays for the agent's own dials
            threads = link_threads()
            for n in range(40):  # one address, many ids: refused beyond the cap
                with contextlib.suppress(AssertionError, OSError):
                    clients.append(await join(hub, f"127.0.0.40:{2000 + n}", source="127.0.0.40"))
            await asyncio.sleep(0.3)
            assert links_from(hub, "127.0.0.40:") == 0  # every inbound slot is taken already
            assert link_threads() == threads
            parent = Parent()
            link = await hub.link_to(parent.peer_id, parent.address)
            assert not link.closed
            parent.close()
        finally:
            for client in clients:
                client.close()
            await hub.close()

    async def test_one_address_many_ids(self, hub: PeerHub) -> None:
        clients = []
        try:
            for n in range(40):
                with contextlib.suppress(AssertionError, OSError):
                    clients.append(await join(hub, f"127.0.0.41:{3000 + n}", source="127.0.0.41"))
            await asyncio.sleep(0.3)
            assert links_from(hub, "127.0.0.41:") == LINKS_PER_ADDRESS
        finally:
            for client in clients:
                client.close()


async def join_tls(hub: PeerHub, tls: TlsDirectory, peer_id: str, source: str) -> socket.socket:
    """A peer that runs TLS with ``tls``'s certificate, then the wire handshake, from ``source``."""
    client, server = connect(source=source)

    def handshake() -> None:
        deadline = time.monotonic() + 5
        channel = tls_handshake(client, tls.client_context(), server=False, first=b"", deadline=deadline)
        conn = wire.Connection(wire.Role.CLIENT, secret=SECRET)
        channel.sendall(conn.send(wire.Hello(peer_id)))
        while (event := conn.next_event()) is wire.NEED_DATA:
            conn.receive_data(channel.recv(4096))
        assert isinstance(event, wire.Welcome), f"{peer_id} from {source}: {event}"
        channel.sendall(conn.send(wire.Auth()))

    done = asyncio.ensure_future(asyncio.to_thread(handshake))
    hub.accept(server, await asyncio.to_thread(server.recv, 1))
    try:
        await done
    except BaseException:
        client.close()
        raise
    return client


class TestTlsLinks:
    """With TLS, a link is a certificate: it must be the connection's own address, and one
    node gets ``links_per_identity`` links however many ids and ports it tries."""

    async def test_identity_and_address_are_checked(self, store: BlobStore, tmp_path: Path) -> None:
        ca = TestCA.create()
        own = TlsDirectory(ca.issue(tmp_path / "hub", "node-hub", ips=("127.0.0.1",)))
        config = HubConfig(peer_id=HUB_ID, secret=SECRET, tls=own, peer_links_per_address=16)
        hub = PeerHub(config, store, {}, AgentMetrics(), TokenBucket(0))
        hub.start()
        node_b = TlsDirectory(ca.issue(tmp_path / "b", "node-b", ips=("127.0.0.50",)))
        clients = []
        try:
            clients.append(await join_tls(hub, node_b, "127.0.0.50:1", "127.0.0.50"))
            await until(lambda: links_from(hub, "127.0.0.50:") == 1)
            (link,) = hub._all
            assert link.identity is not None
            assert link.identity.name == "node-b"
            for port in range(2, 8):  # the same node under other ports: two links at most
                with contextlib.suppress(AssertionError, OSError):
                    clients.append(await join_tls(hub, node_b, f"127.0.0.50:{port}", "127.0.0.50"))
            await asyncio.sleep(0.3)
            assert links_from(hub, "127.0.0.50:") == 2
            with pytest.raises((AssertionError, OSError)):  # node-b's certificate from another address
                clients.append(await join_tls(hub, node_b, "127.0.0.50:9", "127.0.0.51"))
            with pytest.raises((AssertionError, OSError)):  # a plain peer to a TLS agent
                clients.append(await join(hub, "127.0.0.52:1", source="127.0.0.52"))
            assert links_from(hub, "127.0.0.5") == 2
        finally:
            for client in clients:
                client.close()
            await hub.close()
