"""What one peer can make an agent hold: a real hub on loopback, driven by raw peers that
break the rules a real peer keeps (they never read, cancel what they ask for, lie about
piece lengths). Each class is one defect of the peer-wire review (issue 16); each test
failed on the code before its fix."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.agent.metrics import AgentMetrics
from shoal.agent.peer_hub import HubConfig, PeerHub
from shoal.agent.peer_link import peer_secret
from shoal.core.digest import Digest
from shoal.p2p import wire
from shoal.p2p.ratelimit import TokenBucket
from shoal.p2p.wire.codec import _T, _digest, _frame, _u32
from shoal.store.blobstore import BlobStore

MiB = 1 << 20
SECRET = peer_secret("token")
HUB_ID = "127.0.0.1:7000"


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


def connect(*, rcvbuf: int | None = None) -> tuple[socket.socket, socket.socket]:
    """A loopback connection: (client end, server end)."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.socket()
    if rcvbuf is not None:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    client.connect(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return client, server


async def join(hub: PeerHub, peer_id: str = "127.0.0.1:5555", *, rcvbuf: int | None = None) -> socket.socket:
    """A raw peer that completed the handshake with ``hub`` (as the agent's port hands it over)."""
    client, server = connect(rcvbuf=rcvbuf)
    conn = wire.Connection(wire.Role.CLIENT, secret=SECRET)
    client.sendall(conn.send(wire.Hello(peer_id)))
    hub.accept(server, server.recv(1))

    def finish() -> None:
        client.settimeout(5)
        while (event := conn.next_event()) is wire.NEED_DATA:
            conn.receive_data(client.recv(4096))
        assert isinstance(event, wire.Welcome), event
        client.sendall(conn.send(wire.Auth()))

    await asyncio.to_thread(finish)
    return client


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
