"""Peers during an outage: a manifest goes with evidence for the asker's fingerprint, blobs
are checked against their digest, and nothing goes without the peer token."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from shoal.agent.cluster_held import REFUSED, ClusterHeld, PeerManifest, own_source
from shoal.agent.metrics import AgentMetrics
from shoal.agent.outage import RegistryBreaker
from shoal.agent.stale_access import StaleAccess
from shoal.core.digest import Digest
from shoal.oci.auth import Credentials
from shoal.oci.distribution import DistributionPath, PathKind
from shoal.store.blobstore import BlobStore
from shoal.store.outage_ledger import Fingerprints, OutageLedger

ALICE = Credentials("alice", "s3cret")
MALLORY = Credentials("mallory", "x")
TOKEN = "cluster-secret"
LAYER = b"layer bytes " * 1000
MEDIA = "application/vnd.oci.image.manifest.v1+json"


@dataclass
class Node:
    store: BlobStore
    stale: StaleAccess
    cluster: ClusterHeld


def _node(root: Path, session: aiohttp.ClientSession, node_key: bytes, token: str = TOKEN) -> Node:
    store = BlobStore(root / "cache", ttl=3600, max_size=None, min_free=0)
    store.open()
    stale = StaleAccess(
        OutageLedger(root / "cache"),
        Fingerprints(node_key, token.encode()),
        3600.0,
        {"reg": RegistryBreaker("reg")},
        AgentMetrics(),
    )
    return Node(store, stale, ClusterHeld(session, None, "self:1", token, stale, store))


async def _put_blob(store: BlobStore, data: bytes) -> Digest:
    digest = Digest.of(data)
    partial = store.begin(digest, len(data))
    partial.set_size(len(data))
    await partial.write(0, data)
    partial.finish()
    await store.commit(partial)
    return digest


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def holder(tmp_path: Path, session: aiohttp.ClientSession) -> AsyncIterator[tuple[Node, str, Digest, Digest]]:
    """A peer that pulled reg/team/app:v1 as alice while the registry answered."""
    node = _node(tmp_path / "holder", session, b"holder key")
    layer = await _put_blob(node.store, LAYER)
    manifest = json.dumps({"layers": [{"digest": str(layer)}]}).encode()
    digest = Digest.of(manifest)
    node.store.put_manifest(digest, manifest, MEDIA)
    node.stale.confirmed(ALICE, "reg", "team/app", [str(digest)])
    node.stale.manifest("reg", "team/app", manifest)
    node.stale.tagged("reg", "team/app", "v1", MEDIA, str(digest))
    app = web.Application()
    node.cluster.add_routes(app)
    server = TestServer(app)
    await server.start_server()
    yield node, f"127.0.0.1:{server.port}", digest, layer
    await server.close()


def _asker(tmp_path: Path, session: aiohttp.ClientSession, peer: str, token: str = TOKEN) -> Node:
    node = _node(tmp_path / "asker", session, b"asker key", token)
    node.cluster._peers = (time.monotonic(), [peer])  # as the scheduler would list it
    return node


TAG = DistributionPath(PathKind.MANIFEST, "reg", "team/app", "v1")


class TestManifestFromPeers:
    """Evidence for these credentials, or 403 and nothing."""

    async def test_confirmed_credentials_get_the_verified_manifest(
        self, tmp_path: Path, session: aiohttp.ClientSession, holder: tuple[Node, str, Digest, Digest]
    ) -> None:
        _, peer, digest, _ = holder
        found = await _asker(tmp_path, session, peer).cluster.manifest(ALICE, TAG, MEDIA)
        assert isinstance(found, PeerManifest)
        assert found.digest == digest
        assert Digest.of(found.data) == digest
        assert found.tagged_at is not None
        assert abs(found.confirmed_at - time.time()) < 60

    async def test_unknown_credentials_are_refused(
        self, tmp_path: Path, session: aiohttp.ClientSession, holder: tuple[Node, str, Digest, Digest]
    ) -> None:
        _, peer, _, _ = holder
        asker = _asker(tmp_path, session, peer)
        assert await asker.cluster.manifest(MALLORY, TAG, MEDIA) == REFUSED
        assert await asker.cluster.manifest(None, TAG, MEDIA) == REFUSED
        other = DistributionPath(PathKind.MANIFEST, "reg", "team/other", "v1")
        assert await asker.cluster.manifest(ALICE, other, MEDIA) is None

    async def test_without_the_peer_token_nothing(
        self, tmp_path: Path, session: aiohttp.ClientSession, holder: tuple[Node, str, Digest, Digest]
    ) -> None:
        _, peer, _, layer = holder
        asker = _asker(tmp_path, session, peer, token="wrong")
        assert await asker.cluster.manifest(ALICE, TAG, MEDIA) is None
        async with session.get(f"http://{peer}/p2p/v1/held/blobs/{layer}") as resp:
            assert resp.status == 401
            assert LAYER[:100] not in await resp.read()

    async def test_a_manifest_that_does_not_match_is_dropped(
        self, tmp_path: Path, session: aiohttp.ClientSession
    ) -> None:
        real = b'{"layers": []}'

        async def lying(request: web.Request) -> web.Response:
            return web.json_response(
                {
                    "digest": str(Digest.of(real)),
                    "media_type": MEDIA,
                    "manifest": base64.b64encode(real + b" ").decode(),
                    "confirmed_at": time.time(),
                    "tagged_at": time.time(),
                }
            )

        app = web.Application()
        app.router.add_get("/p2p/v1/held/manifest", lying)
        server = TestServer(app)
        await server.start_server()
        try:
            asker = _asker(tmp_path, session, f"127.0.0.1:{server.port}")
            assert await asker.cluster.manifest(ALICE, TAG, MEDIA) is None
        finally:
            await server.close()


class TestBlobFromPeers:
    """The blob lands in a partial that checks its digest."""

    async def test_fill(
        self, tmp_path: Path, session: aiohttp.ClientSession, holder: tuple[Node, str, Digest, Digest]
    ) -> None:
        _, peer, _, layer = holder
        asker = _asker(tmp_path, session, peer)
        partial = asker.store.begin(layer, None)
        assert await asker.cluster.fill_blob(partial, layer)
        partial.finish()  # raises on a digest mismatch
        await asker.store.commit(partial)
        path = asker.store.blob_path(layer)
        assert path is not None
        assert path.read_bytes() == LAYER

    async def test_nobody_holds_it(
        self, tmp_path: Path, session: aiohttp.ClientSession, holder: tuple[Node, str, Digest, Digest]
    ) -> None:
        _, peer, _, _ = holder
        asker = _asker(tmp_path, session, peer)
        missing = Digest.of(b"nobody has this")
        partial = asker.store.begin(missing, None)
        assert not await asker.cluster.fill_blob(partial, missing)
        partial.fail(RuntimeError("test over"))


class TestOwnSource:
    """A node asks its peers from the address its certificate names, when this host has it."""

    @pytest.mark.parametrize(
        ("address", "expected"),
        [
            ("127.0.0.5:65001", ("127.0.0.5", 0)),
            ("[::1]:65001", ("::1", 0)),
            ("192.0.2.77:65001", None),  # TEST-NET-1: not an address of this host
            ("node-a:65001", None),
        ],
    )
    def test_table(self, address: str, expected: tuple[str, int] | None) -> None:
        assert own_source(address) == expected
