"""During a registry outage, manifests and blobs from the other agents, over their HTTP port.

A node that does not hold an image asks every live agent (the scheduler's ``/v1/agents``)
for the manifest. A peer answers with the manifest and its evidence: when the registry last
confirmed the client's credentials for that repository. The credentials themselves never
travel: the client's fingerprint keyed by the cluster's secret does, and the peer looks that
up. A peer that holds the manifest but has no such evidence answers 403 and sends nothing.
A blob is asked for the same way first (a HEAD with the fingerprint: held, and with evidence
or not), so a client no node saw confirmed gets 401/403, and a 502 only when nobody holds it.
Manifests are checked against their digest, blobs against theirs (``PartialBlob``).

With a TLS directory, peers are asked over HTTPS on the agent's port (``shoal.p2p.node_https``)
and both sides check the other's node certificate: the asker presents its own, connecting from
the address it names; the answerer serves only a caller whose certificate names the address it
calls from (as on the peer wire); the asker's TLS accepts only a certificate naming the peer it
dialled. Nothing crosses the network in clear, and no token is sent. Without TLS (labs) both
routes require the peer token, like the other ``/p2p/v1/`` routes that serve content.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import ipaddress
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from shoal.agent.outage import may_serve_stale
from shoal.agent.stale_access import StaleAccess
from shoal.core.digest import Digest, DigestError
from shoal.oci.auth import Credentials
from shoal.oci.distribution import DistributionPath
from shoal.p2p.node_https import NodeHttps
from shoal.p2p.protocol import bearer
from shoal.p2p.scheduler_client import SchedulerClient, SchedulerUnavailable
from shoal.p2p.tls import peer_identity
from shoal.store.blobstore import BlobStore
from shoal.store.containerd_content import ContainerdContent
from shoal.store.partial import PartialBlob

log = logging.getLogger(__name__)

MANIFEST_PATH = "/p2p/v1/held/manifest"
BLOB_PATH = "/p2p/v1/held/blobs/{digest}"
CONFIRMED_AT = "Shoal-Confirmed-At"
"""a peer's answer to a blob HEAD: when the registry confirmed the asker's credentials"""
PEER_TIMEOUT = 3.0
"""seconds a peer has to answer a manifest or blob request's headers"""
PEERS_FOR = 5.0
"""seconds the scheduler's list of agents is reused"""
CHUNK = 1 << 20
ASK_AT_ONCE = 16
"""peers asked for a manifest at once (in random order, until a batch has it): a large cluster
is not asked whole by every node of an outage; the newest answer in that batch wins"""


@dataclass(frozen=True, slots=True)
class PeerManifest:
    """A manifest a peer holds for a repository, verified against ``digest``."""

    data: bytes
    digest: Digest
    media_type: str
    confirmed_at: float
    """when the registry confirmed the asking client's credentials for the repository"""
    tagged_at: float | None
    """when the registry last gave this digest for the tag (None: asked by digest)"""


REFUSED = "refused"
"""a peer holds it, but no peer saw the registry confirm these credentials"""


@dataclass(frozen=True, slots=True)
class PeerBlob:
    """Peers that hold a blob, and the newest evidence one of them gave for the asker's
    credentials (None: none did; the asker's own evidence may still do)."""

    holders: list[str]
    confirmed_at: float | None


def _check_token(request: web.Request, token: str | None) -> None:
    if token is None:
        return
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise web.HTTPUnauthorized(text="peer token required\n")


def _check_node(request: web.Request) -> None:
    """The caller is a node: over TLS, with a certificate of the CA naming its address."""
    transport = request.transport
    if transport is None or transport.get_extra_info("sslcontext") is None:
        raise web.HTTPForbidden(text="held content is served over TLS only, to nodes with a certificate\n")
    identity = peer_identity(transport.get_extra_info("peercert"))
    if identity is None:
        raise web.HTTPForbidden(text="a node certificate is required\n")
    if request.remote is None or not identity.has_ip(request.remote):
        raise web.HTTPForbidden(text=f"the certificate of {identity.name!r} does not name {request.remote}\n")


def own_source(address: str) -> tuple[str, int] | None:
    """Where to connect from so peers see the address our certificate names (None: this
    host does not have that address, any will do)."""
    host = address.rpartition(":")[0].strip("[]")
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return None
    with contextlib.suppress(OSError), socket.socket(family) as probe:
        probe.bind((host, 0))
        return (host, 0)
    return None


class ClusterHeld:
    """Asks peers for what they hold, and answers them.

    Parameters:
        session: the agent's HTTP session (not closed here).
        scheduler: lists the live agents (None: no peers).
        address: this agent's advertised host:port (left out of the peers asked).
        token: the cluster's peer secret (None: lab mode, nothing checked).
        stale: this node's record of the registry's answers.
        store: this node's cache.
        content: the node's containerd content store, if configured.
        https: this node's TLS material for HTTPS between nodes (None: plain HTTP with the token).
        clock: monotonic seconds.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        scheduler: SchedulerClient | None,
        address: str,
        token: str | None,
        stale: StaleAccess,
        store: BlobStore,
        content: ContainerdContent | None = None,
        https: NodeHttps | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session = session
        self.scheduler = scheduler
        self.address = address
        self.token = token
        self.stale = stale
        self.store = store
        self.content = content
        self.https = https
        self.clock = clock
        self._scheme = "https" if https is not None else "http"
        self._tls_session: aiohttp.ClientSession | None = None
        """with TLS: a session that connects from our own address (what our certificate names)"""
        self._peers: tuple[float, list[str]] = (float("-inf"), [])
        self._holders: list[str] = []
        """peers that recently answered with a manifest: asked first for its blobs"""

    # -- the asking side -----------------------------------------------------------------------
    async def peers(self) -> list[str]:
        """Addresses of the other live agents, as the scheduler lists them (the last list
        when every scheduler is down too: better than none)."""
        at, cached = self._peers
        if self.scheduler is None or self.clock() - at < PEERS_FOR:
            return cached
        try:
            views = await self.scheduler.agents()
        except SchedulerUnavailable as exc:
            log.debug("no agent list: %s", exc)
            return cached
        found = [v.announcement.address for v in views if v.announcement.address != self.address]
        self._peers = (self.clock(), found)
        return found

    async def manifest(
        self, creds: Credentials | None, dist: DistributionPath, accept: str
    ) -> PeerManifest | str | None:
        """The newest verified answer of a peer with evidence for ``creds``; ``REFUSED`` when
        peers hold it without evidence; None when no peer holds it."""
        params = {
            "registry": dist.registry,
            "repository": dist.repository,
            "reference": dist.reference,
            "fp": self.stale.fingerprints.cluster(creds),
            "accept": accept,
        }
        peers = list(await self.peers())
        random.shuffle(peers)
        refused = False
        for start in range(0, len(peers), ASK_AT_ONCE):
            batch = peers[start : start + ASK_AT_ONCE]
            answers = await asyncio.gather(*(self._ask_manifest(peer, params, dist) for peer in batch))
            found = [(a, p) for a, p in zip(answers, batch, strict=True) if isinstance(a, PeerManifest)]
            refused = refused or REFUSED in answers
            if found:
                self._holders = [p for _, p in found] + [p for p in self._holders if p not in batch][:ASK_AT_ONCE]
                return max((a for a, _ in found), key=lambda a: (a.tagged_at or 0.0, a.confirmed_at))
        return REFUSED if refused else None

    async def _ask_manifest(
        self, peer: str, params: dict[str, str], dist: DistributionPath
    ) -> PeerManifest | str | None:
        timeout = aiohttp.ClientTimeout(total=PEER_TIMEOUT)
        url = f"{self._scheme}://{peer}{MANIFEST_PATH}"
        try:
            async with self._peer_session().get(
                url, params=params, headers=self._auth(), timeout=timeout, ssl=self._ssl()
            ) as resp:
                if resp.status == 403:
                    return REFUSED
                if resp.status != 200:
                    return None
                body: Any = await resp.json()
            digest = Digest.parse(str(body["digest"]))
            data = base64.b64decode(str(body["manifest"]), validate=True)
            confirmed_at = float(body["confirmed_at"])
            tagged = body.get("tagged_at")
            tagged_at = None if tagged is None else float(tagged)
            media_type = str(body["media_type"])
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError, DigestError) as exc:
            log.debug("peer %s on %s: %r", peer, dist.reference, exc)
            return None
        if Digest.of(data, digest.algorithm) != digest or (dist.digest is not None and digest != dist.digest):
            log.warning("peer %s sent a manifest that does not match %s: ignored", peer, digest)
            return None
        if not may_serve_stale(confirmed_at, self.stale.clock(), self.stale.grace):
            return REFUSED
        return PeerManifest(data, digest, media_type, confirmed_at, tagged_at)

    async def blob(self, creds: Credentials | None, dist: DistributionPath) -> PeerBlob | None:
        """Which peers hold the blob, and their evidence for ``creds`` (None: no peer holds it)."""
        params = {
            "registry": dist.registry,
            "repository": dist.repository,
            "fp": self.stale.fingerprints.cluster(creds),
        }
        url_path = BLOB_PATH.format(digest=dist.digest)
        peers = list(await self.peers())
        random.shuffle(peers)
        for start in range(0, len(peers), ASK_AT_ONCE):
            batch = peers[start : start + ASK_AT_ONCE]
            answers = await asyncio.gather(*(self._ask_blob(peer, url_path, params) for peer in batch))
            holders = [p for a, p in zip(answers, batch, strict=True) if a is not None]
            if holders:
                self._holders = holders + [p for p in self._holders if p not in batch][:ASK_AT_ONCE]
                times = [a for a in answers if isinstance(a, float)]
                fresh = [t for t in times if may_serve_stale(t, self.stale.clock(), self.stale.grace)]
                return PeerBlob(holders, max(fresh) if fresh else None)
        return None

    async def _ask_blob(self, peer: str, path: str, params: dict[str, str]) -> float | str | None:
        """A peer's evidence (when confirmed), ``REFUSED`` (held, no evidence), None (not held)."""
        timeout = aiohttp.ClientTimeout(total=PEER_TIMEOUT)
        try:
            async with self._peer_session().head(
                f"{self._scheme}://{peer}{path}", params=params, headers=self._auth(), timeout=timeout, ssl=self._ssl()
            ) as resp:
                if resp.status == 403:
                    return REFUSED
                if resp.status != 200:
                    return None
                return float(resp.headers.get(CONFIRMED_AT, ""))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.debug("peer %s on %s: %r", peer, path, exc)
            return None

    async def fill_blob(self, partial: PartialBlob, digest: Digest) -> bool:
        """Write the blob into ``partial`` from the first peer that holds it (resuming at the
        next one if a peer breaks off). False when no peer could give it."""
        path = BLOB_PATH.format(digest=digest)
        peers = await self.peers()
        holders = [p for p in self._holders if p in peers]  # who just gave us its manifest
        for peer in holders + [p for p in peers if p not in holders]:
            offset = partial.contiguous
            headers = {**self._auth(), **({"Range": f"bytes={offset}-"} if offset else {})}
            timeout = aiohttp.ClientTimeout(total=None, connect=PEER_TIMEOUT, sock_read=30.0)
            try:
                async with self._peer_session().get(
                    f"{self._scheme}://{peer}{path}", headers=headers, timeout=timeout, ssl=self._ssl()
                ) as resp:
                    if resp.status not in (200, 206) or (offset and resp.status != 206):
                        continue
                    if partial.size is None:
                        size = resp.content_length
                        if size is None:
                            continue
                        self.store.reserve(partial, size)
                        partial.set_size(size)
                    pos = offset
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        await partial.write(pos, chunk)
                        pos += len(chunk)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("peer %s broke off %s at %d bytes: %s", peer, digest, partial.contiguous, exc)
                continue
            if partial.size is not None and partial.contiguous >= partial.size:
                return True
        return False

    def _peer_session(self) -> aiohttp.ClientSession:
        if self.https is None:
            return self.session
        if self._tls_session is None:
            connector = aiohttp.TCPConnector(local_addr=own_source(self.address), limit_per_host=ASK_AT_ONCE)
            self._tls_session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self._tls_session

    async def close(self) -> None:
        if self._tls_session is not None:
            await self._tls_session.close()

    def _auth(self) -> dict[str, str]:
        """The token only without TLS: with it, the node certificate says who asks."""
        return {} if self.https is not None else bearer(self.token)

    def _ssl(self) -> ssl.SSLContext | bool:
        return self.https.client_context() if self.https is not None else True

    # -- the answering side --------------------------------------------------------------------
    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(MANIFEST_PATH, self._serve_manifest)
        app.router.add_get(BLOB_PATH, self._serve_blob)

    def _check_caller(self, request: web.Request) -> None:
        if self.https is not None:
            _check_node(request)
        else:
            _check_token(request, self.token)

    async def _serve_manifest(self, request: web.Request) -> web.Response:
        self._check_caller(request)
        q = request.query
        registry, repository, reference, fp = (q.get(k, "") for k in ("registry", "repository", "reference", "fp"))
        tagged_at: float | None = None
        try:
            digest = Digest.parse(reference)
        except DigestError:
            answer = self.stale.last_tag(registry, repository, reference, q.get("accept", "*/*"))
            if answer is None:
                raise web.HTTPNotFound(text="tag not held\n") from None
            digest, tagged_at = Digest.parse(answer.digest), answer.at
        held = self.store.get_manifest(digest)
        if held is None:
            raise web.HTTPNotFound(text="manifest not held\n")
        confirmed_at = self.stale.evidence(fp, registry, repository, str(digest))
        if confirmed_at is None:
            raise web.HTTPForbidden(text="no confirmation of these credentials for this repository\n")
        data, media_type = held
        return web.json_response(
            {
                "digest": str(digest),
                "media_type": media_type,
                "manifest": base64.b64encode(data).decode(),
                "confirmed_at": confirmed_at,
                "tagged_at": tagged_at,
            }
        )

    async def _serve_blob(self, request: web.Request) -> web.StreamResponse:
        self._check_caller(request)
        try:
            digest = Digest.parse(request.match_info["digest"])
        except DigestError:
            raise web.HTTPBadRequest(text="bad digest\n") from None
        path: Path | None = self.store.blob_path(digest)
        if path is None and self.content is not None:
            path = self.content.path(digest)
        if path is None:
            raise web.HTTPNotFound(text="blob not held\n")
        headers = {"Content-Type": "application/octet-stream"}
        fp = request.query.get("fp")
        if fp is not None:  # asked whether these credentials were confirmed (the asker decides)
            q = request.query
            confirmed_at = self.stale.evidence(fp, q.get("registry", ""), q.get("repository", ""), str(digest))
            if confirmed_at is None:
                raise web.HTTPForbidden(text="no confirmation of these credentials for this repository\n")
            headers[CONFIRMED_AT] = repr(confirmed_at)
        return web.FileResponse(path, headers=headers)
