"""Serve manifests: tags always resolve at the registry, digests come from the cache.

A tag is asked of the registry on every request (with the client's own credentials and
``Accept``), so a moved tag is seen at once. If the registry cannot be reached, the last
answer for that tag is served, provided these credentials were accepted for the repository
before. Content fetched by digest is checked against the digest before it is cached.
"""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web

from shoal.agent.access import AccessKey
from shoal.agent.metrics import AgentMetrics
from shoal.agent.upstreams import Upstreams
from shoal.core.digest import Digest, DigestError
from shoal.oci.auth import Credentials, fingerprint
from shoal.oci.client import UpstreamUnavailable
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


class ManifestService:
    def __init__(self, store: BlobStore, upstreams: Upstreams, metrics: AgentMetrics) -> None:
        self.store = store
        self.upstreams = upstreams
        self.metrics = metrics
        self._last_tag: dict[tuple[str, str, str, str], Digest] = {}

    async def serve(self, request: web.Request, dist: DistributionPath, creds: Credentials | None) -> web.Response:
        head = request.method == "HEAD"
        # Go clients (skopeo, containerd) send one Accept header per media type: pass them all
        accept = ", ".join(request.headers.getall("Accept", [])) or DEFAULT_ACCEPT
        if dist.digest is not None:
            cached = self.store.get_manifest(dist.digest)
            if cached is not None:
                await self.upstreams.authorize(creds, dist)
                self.metrics.cache_hits.labels("manifest").inc()
                data, media_type = cached
                return manifest_response(None if head else data, dist.digest, media_type, len(data))
        self.metrics.cache_misses.labels("manifest").inc()
        if head and dist.digest is None:
            return await self._head_tag(dist, creds, accept)
        tag_key = (fingerprint(creds), dist.registry, dist.repository, f"{dist.reference} {accept}")
        try:
            data, digest, media_type = await self._fetch(dist, creds, accept)
        except UpstreamUnavailable:
            stale = self._stale(tag_key, dist) if dist.digest is None else None
            if stale is None:
                raise
            log.warning("registry unreachable; serving the last answer for %s:%s", dist.repository, dist.reference)
            data, digest, media_type = stale
        if dist.digest is None:
            self._last_tag[tag_key] = digest
        return manifest_response(None if head else data, digest, media_type, len(data))

    async def _head_tag(self, dist: DistributionPath, creds: Credentials | None, accept: str) -> web.Response:
        """HEAD a tag upstream: registries such as Docker Hub do not count HEADs as pulls."""
        resp = await self._open("HEAD", dist, creds, accept)
        resp.release()
        try:
            digest = Digest.parse(resp.headers.get("Docker-Content-Digest", ""))
        except DigestError:
            raise DistributionError(
                ErrorCode.UPSTREAM_INVALID, f"{dist.registry} sent no manifest digest for a HEAD"
            ) from None
        self.upstreams.record_allowed(creds, dist, digest)
        media_type = resp.headers.get("Content-Type", "application/octet-stream").split(";")[0]
        return manifest_response(None, digest, media_type, resp.content_length or 0)

    def _stale(self, key: tuple[str, str, str, str], dist: DistributionPath) -> tuple[bytes, Digest, str] | None:
        digest = self._last_tag.get(key)
        if digest is None or not self.upstreams.access.stale_allowed(
            AccessKey(key[0], dist.registry, dist.repository, str(digest))
        ):
            return None
        cached = self.store.get_manifest(digest)
        return None if cached is None else (cached[0], digest, cached[1])

    async def _open(
        self, method: str, dist: DistributionPath, creds: Credentials | None, accept: str
    ) -> aiohttp.ClientResponse:
        return await self.upstreams.client(dist.registry).open(
            method,
            f"/v2/{dist.repository}/manifests/{dist.reference}",
            repository=dist.repository,
            creds=creds,
            headers={"Accept": accept},
            kind="manifest",
        )

    async def _fetch(self, dist: DistributionPath, creds: Credentials | None, accept: str) -> tuple[bytes, Digest, str]:
        resp = await self._open("GET", dist, creds, accept)
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
        return data, digest, media_type
