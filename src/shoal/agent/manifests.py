"""Serve manifests: tags always resolve at the registry, digests come from the cache.

A tag is asked of the registry on every request (with the client's own credentials and
``Accept``), so a moved tag is seen at once. If the registry cannot answer, the last answer
for that tag (here or at a peer) is served, provided the registry confirmed these
credentials for the repository within the outage grace (``shoal.agent.stale_access``).
The registry is waited for briefly only when such an answer is held; else as long as a
direct pull would wait (``shoal.oci.registry_wait``).
Content fetched by digest is checked against the digest before it is cached.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from shoal.agent.cluster_held import REFUSED, ClusterHeld, PeerManifest
from shoal.agent.metrics import AgentMetrics
from shoal.agent.upstreams import StaleRefused, Upstreams, stale_refusal
from shoal.core.digest import Digest, DigestError
from shoal.oci.auth import Credentials
from shoal.oci.client import Fallback, UpstreamUnavailable
from shoal.oci.distribution import DistributionPath
from shoal.oci.errors import DistributionError, ErrorCode
from shoal.oci.mediatypes import DEFAULT_ACCEPT
from shoal.store.blobstore import BlobStore

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 4 << 20
"""The distribution registry's own limit; a bigger "manifest" is refused, not buffered."""


def manifest_response(data: bytes | None, digest: Digest, media_type: str, size: int) -> web.Response:
    headers = {
        "Docker-Content-Digest": str(digest),
        "Content-Type": media_type,
        "Content-Length": str(size),
    }
    return web.Response(body=data, headers=headers) if data is not None else web.Response(headers=headers)


@dataclass(frozen=True, slots=True)
class HeldManifest:
    """A manifest held (here or at a peer) that may go to the asking credentials."""

    data: bytes
    digest: Digest
    media_type: str


class HeldLookup:
    """What is held for one request, looked up once: during the registry's wait (is there
    something to serve instead?) or after it failed (serve it)."""

    def __init__(self, service: ManifestService, dist: DistributionPath, creds: Credentials | None, accept: str):
        self._service, self._dist, self._creds, self._accept = service, dist, creds, accept
        self._answer: HeldManifest | str | None = None
        self._asked = False

    async def answer(self) -> HeldManifest | str | None:
        if not self._asked:
            self._answer = await self._service.lookup_held(self._dist, self._creds, self._accept)
            self._asked = True
        return self._answer

    async def available(self) -> bool:
        return isinstance(await self.answer(), HeldManifest)


class ManifestService:
    def __init__(
        self, store: BlobStore, upstreams: Upstreams, metrics: AgentMetrics, cluster: ClusterHeld | None = None
    ) -> None:
        self.store = store
        self.upstreams = upstreams
        self.metrics = metrics
        self.cluster = cluster

    async def serve(self, request: web.Request, dist: DistributionPath, creds: Credentials | None) -> web.Response:
        head = request.method == "HEAD"
        # Go clients (skopeo, containerd) send one Accept header per media type: pass them all
        accept = ", ".join(request.headers.getall("Accept", [])) or DEFAULT_ACCEPT
        held = HeldLookup(self, dist, creds, accept)
        if dist.digest is not None:
            cached = self.store.get_manifest(dist.digest)
            if cached is not None:
                try:
                    # a peer may have seen the registry confirm these credentials
                    fallback = held.available if self.cluster is not None else None
                    await self.upstreams.authorize(creds, dist, fallback)
                except StaleRefused as refused:
                    if self.cluster is None:
                        raise
                    data, digest, media_type = await self._held(held, dist, creds, refused.unavailable)
                    return manifest_response(None if head else data, digest, media_type, len(data))
                self.metrics.cache_hits.labels("manifest").inc()
                data, media_type = cached
                return manifest_response(None if head else data, dist.digest, media_type, len(data))
        self.metrics.cache_misses.labels("manifest").inc()
        try:
            if head and dist.digest is None:
                return await self._head_tag(dist, creds, accept, held.available)
            data, digest, media_type = await self._fetch(dist, creds, accept, held.available)
        except UpstreamUnavailable as exc:
            data, digest, media_type = await self._held(held, dist, creds, exc)
        return manifest_response(None if head else data, digest, media_type, len(data))

    async def _head_tag(
        self, dist: DistributionPath, creds: Credentials | None, accept: str, fallback: Fallback
    ) -> web.Response:
        """HEAD a tag upstream: registries such as Docker Hub do not count HEADs as pulls."""
        resp = await self._open("HEAD", dist, creds, accept, fallback)
        resp.release()
        try:
            digest = Digest.parse(resp.headers.get("Docker-Content-Digest", ""))
        except DigestError:
            raise DistributionError(
                ErrorCode.UPSTREAM_INVALID, f"{dist.registry} sent no manifest digest for a HEAD"
            ) from None
        self.upstreams.record_allowed(creds, dist, digest)
        media_type = resp.headers.get("Content-Type", "application/octet-stream").split(";")[0]
        if self.upstreams.stale is not None and self.store.get_manifest(digest) is not None:
            self.upstreams.stale.tagged(dist.registry, dist.repository, dist.reference, media_type, str(digest))
        return manifest_response(None, digest, media_type, resp.content_length or 0)

    async def _held(
        self, held: HeldLookup, dist: DistributionPath, creds: Credentials | None, exc: UpstreamUnavailable
    ) -> tuple[bytes, Digest, str]:
        """The registry cannot answer: the manifest as held here or by a peer, if these
        credentials were confirmed for the repository within the grace; else the error (401
        or 403 when it is held but not for these credentials)."""
        stale = self.upstreams.stale
        if stale is None or not stale.enabled:
            raise exc
        found = await held.answer()
        if isinstance(found, HeldManifest):
            stale.served("manifest", dist.registry, dist.repository, dist.reference, str(found.digest))
            return found.data, found.digest, found.media_type
        if found == REFUSED:
            raise stale_refusal(dist, creds, exc)
        raise exc

    async def lookup_held(
        self, dist: DistributionPath, creds: Credentials | None, accept: str
    ) -> HeldManifest | str | None:
        """The manifest held here or by a peer for these credentials; ``REFUSED`` when it is
        held but not for them; None when nobody holds it (or outages are not served)."""
        stale = self.upstreams.stale
        if stale is None or not stale.enabled:
            return None
        refused = False
        if dist.digest is not None:
            digest: str | None = str(dist.digest)
        else:
            answer = stale.last_tag(dist.registry, dist.repository, dist.reference, accept)
            digest = None if answer is None else answer.digest
        held = None if digest is None else self.store.get_manifest(Digest.parse(digest))
        if held is not None and digest is not None:
            if stale.may_serve(creds, dist.registry, dist.repository, digest):
                return HeldManifest(held[0], Digest.parse(digest), held[1])
            refused = True
        found = None if self.cluster is None else await self.cluster.manifest(creds, dist, accept)
        if isinstance(found, PeerManifest):
            self.store.put_manifest(found.digest, found.data, found.media_type)
            stale.adopt(creds, dist.registry, dist.repository, found.confirmed_at, str(found.digest))
            stale.manifest(dist.registry, dist.repository, found.data)
            if dist.digest is None and found.tagged_at is not None:
                stale.tagged(
                    dist.registry, dist.repository, dist.reference, found.media_type, str(found.digest), found.tagged_at
                )
            return HeldManifest(found.data, found.digest, found.media_type)
        return REFUSED if refused or found == REFUSED else None

    async def _open(
        self, method: str, dist: DistributionPath, creds: Credentials | None, accept: str, fallback: Fallback
    ) -> aiohttp.ClientResponse:
        return await self.upstreams.client(dist.registry).open(
            method,
            f"/v2/{dist.repository}/manifests/{dist.reference}",
            repository=dist.repository,
            creds=creds,
            headers={"Accept": accept},
            kind="manifest",
            fallback=fallback,
        )

    async def _fetch(
        self, dist: DistributionPath, creds: Credentials | None, accept: str, fallback: Fallback
    ) -> tuple[bytes, Digest, str]:
        resp = await self._open("GET", dist, creds, accept, fallback)
        async with resp:
            if (resp.content_length or 0) > MAX_MANIFEST_BYTES:
                raise DistributionError(ErrorCode.MANIFEST_INVALID, "manifest larger than 4 MiB")
            data = await resp.content.read(MAX_MANIFEST_BYTES + 1)
            if len(data) > MAX_MANIFEST_BYTES:
                raise DistributionError(ErrorCode.MANIFEST_INVALID, "manifest larger than 4 MiB")
            media_type = resp.headers.get("Content-Type", "application/octet-stream").split(";")[0]
            header_digest = resp.headers.get("Docker-Content-Digest")
        expected = dist.digest
        if expected is None and header_digest:
            try:
                expected = Digest.parse(header_digest)
            except DigestError:
                expected = None
        digest = Digest.of(data, expected.algorithm if expected else "sha256")
        if expected is not None and digest != expected:
            self.metrics.digest_mismatches.labels("manifest").inc()
            raise DistributionError(
                ErrorCode.UPSTREAM_INVALID,
                f"{dist.registry} sent a manifest that does not match {expected}",
            )
        self.upstreams.record_allowed(creds, dist, digest)
        self.store.put_manifest(digest, data, media_type)
        stale = self.upstreams.stale
        if stale is not None:
            stale.manifest(dist.registry, dist.repository, data)
            if dist.digest is None:
                stale.tagged(dist.registry, dist.repository, dist.reference, media_type, str(digest))
        return data, digest, media_type
