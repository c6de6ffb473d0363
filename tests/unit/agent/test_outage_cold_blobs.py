"""A blob a node does not hold, during an outage: from a peer for credentials some node saw
confirmed, 401/403 when peers hold it but saw no such thing, the registry's error when
nobody holds it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from shoal.agent.access import AccessCache
from shoal.agent.cluster_held import ClusterHeld, PeerBlob
from shoal.agent.held_source import HeldSource
from shoal.agent.metrics import AgentMetrics
from shoal.agent.outage import RegistryBreaker
from shoal.agent.stale_access import StaleAccess
from shoal.agent.upstreams import StaleRefused, Upstreams
from shoal.core.digest import Digest
from shoal.oci.auth import Credentials
from shoal.oci.client import UpstreamUnavailable
from shoal.oci.distribution import DistributionPath, PathKind
from shoal.store.blobstore import BlobStore
from shoal.store.outage_ledger import Fingerprints, OutageLedger
from shoal.store.partial import PartialBlob

ALICE = Credentials("alice", "s3cret")
MALLORY = Credentials("alice", "guess")
TOKEN = "cluster-secret"
LAYER = b"layer bytes " * 1000


class RegistryRefuses:
    """``BlobSource``: the registry refuses connections."""

    async def fill(self, partial: PartialBlob, dist: DistributionPath, creds: Credentials | None) -> None:
        raise UpstreamUnavailable("cannot reach reg", registry="reg", cause="connection refused")

    async def cached(self, digest: Digest, size: int) -> None:
        pass

    def rejected(self, digest: Digest) -> bool:
        return False


class Node:
    def __init__(self, root: Path, session: aiohttp.ClientSession, key: bytes) -> None:
        self.store = BlobStore(root / "cache", ttl=3600, max_size=None, min_free=0)
        self.store.open()
        self.stale = StaleAccess(
            OutageLedger(root / "cache"),
            Fingerprints(key, TOKEN.encode()),
            3600.0,
            {"reg": RegistryBreaker("reg")},
            AgentMetrics(),
        )
        self.cluster = ClusterHeld(session, None, "self:1", TOKEN, self.stale, self.store)
        upstreams = Upstreams({"reg": "http://127.0.0.1:9"}, session, AgentMetrics(), AccessCache(), self.stale)
        self.source = HeldSource(RegistryRefuses(), upstreams, self.store, None, self.cluster)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def peer(tmp_path: Path, session: aiohttp.ClientSession) -> AsyncIterator[tuple[str, Digest]]:
    """A node that holds a layer of reg/team/app, which the registry let alice read."""
    node = Node(tmp_path / "holder", session, b"holder key")
    digest = Digest.of(LAYER)
    partial = node.store.begin(digest, len(LAYER))
    partial.set_size(len(LAYER))
    await partial.write(0, LAYER)
    partial.finish()
    await node.store.commit(partial)
    node.stale.confirmed(ALICE, "reg", "team/app", [str(digest)])
    app = web.Application()
    node.cluster.add_routes(app)
    server = TestServer(app)
    await server.start_server()
    yield f"127.0.0.1:{server.port}", digest
    await server.close()


def cold_node(tmp_path: Path, session: aiohttp.ClientSession, peer: str) -> Node:
    node = Node(tmp_path / "cold", session, b"cold key")
    node.cluster._peers = (time.monotonic(), [peer])  # as the scheduler would list it
    return node


def blob(digest: Digest) -> DistributionPath:
    return DistributionPath(PathKind.BLOB, "reg", "team/app", str(digest), digest)


class TestPeerBlobEvidence:
    """A peer says whether it holds a blob and whether it saw these credentials confirmed."""

    async def test_holders_and_their_evidence(
        self, tmp_path: Path, session: aiohttp.ClientSession, peer: tuple[str, Digest]
    ) -> None:
        address, digest = peer
        node = cold_node(tmp_path, session, address)
        confirmed = await node.cluster.blob(ALICE, blob(digest))
        assert isinstance(confirmed, PeerBlob)
        assert confirmed.holders == [address]
        assert confirmed.confirmed_at is not None
        assert abs(confirmed.confirmed_at - time.time()) < 60
        assert await node.cluster.blob(MALLORY, blob(digest)) == PeerBlob([address], None)
        assert await node.cluster.blob(ALICE, blob(Digest.of(b"nobody has this"))) is None


class TestColdNodeBlob:
    """The answer a client gets for a blob its node does not hold while the registry is down."""

    async def test_confirmed_at_a_peer_gets_the_blob(
        self, tmp_path: Path, session: aiohttp.ClientSession, peer: tuple[str, Digest]
    ) -> None:
        address, digest = peer
        node = cold_node(tmp_path, session, address)
        partial = node.store.begin(digest, None)
        await node.source.fill(partial, blob(digest), ALICE)
        assert partial.size == len(LAYER)
        assert partial.contiguous == len(LAYER)
        assert node.stale.may_serve(ALICE, "reg", "team/app", str(digest))  # the peer's evidence, adopted

    @pytest.mark.parametrize(("creds", "status"), [(MALLORY, 403), (None, 401)])
    async def test_credentials_no_node_confirmed_are_refused(
        self,
        tmp_path: Path,
        session: aiohttp.ClientSession,
        peer: tuple[str, Digest],
        creds: Credentials | None,
        status: int,
    ) -> None:
        address, digest = peer
        node = cold_node(tmp_path, session, address)
        partial = node.store.begin(digest, None)
        with pytest.raises(StaleRefused) as refused:
            await node.source.fill(partial, blob(digest), creds)
        assert refused.value.status == status
        assert "connection refused" in refused.value.message
        assert partial.contiguous == 0

    async def test_nobody_holds_it_the_registrys_error(
        self, tmp_path: Path, session: aiohttp.ClientSession, peer: tuple[str, Digest]
    ) -> None:
        address, _ = peer
        node = cold_node(tmp_path, session, address)
        unheld = Digest.of(b"nobody has this")
        with pytest.raises(UpstreamUnavailable) as failed:
            await node.source.fill(node.store.begin(unheld, None), blob(unheld), MALLORY)
        assert failed.value.cause == "connection refused"
