"""The configured registries, the access check for cached content, and upstream error mapping."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import aiohttp

from shoal.agent.access import AccessCache
from shoal.agent.metrics import AgentMetrics
from shoal.oci.auth import Credentials, TokenCache, fingerprint
from shoal.oci.client import (
    LatencyObserver,
    RegistryClient,
    UpstreamDenied,
    UpstreamError,
    UpstreamStatus,
    UpstreamUnauthorized,
    UpstreamUnavailable,
)
from shoal.oci.distribution import DistributionPath
from shoal.oci.errors import DistributionError, ErrorCode

log = logging.getLogger(__name__)


def challenge_error(registry: str, message: str) -> DistributionError:
    """401 with a Basic challenge: the runtime retries with the pull secret's credentials."""
    return DistributionError(
        ErrorCode.UNAUTHORIZED,
        message,
        headers={"WWW-Authenticate": f'Basic realm="shoal mirror of {registry}"'},
    )


def map_upstream_error(exc: UpstreamError, dist: DistributionPath) -> DistributionError:
    """Translate an upstream failure into what the client should see."""
    if isinstance(exc, UpstreamUnauthorized):
        return challenge_error(dist.registry, str(exc))
    if isinstance(exc, UpstreamDenied):
        return DistributionError(ErrorCode.DENIED, str(exc))
    if isinstance(exc, UpstreamStatus):
        code = {
            "blob": ErrorCode.BLOB_UNKNOWN,
            "manifest": ErrorCode.MANIFEST_UNKNOWN,
        }.get(dist.kind.value, ErrorCode.NAME_UNKNOWN)
        if exc.status == 404:
            return DistributionError(code, f"{dist.registry}/{dist.repository}: {dist.reference} not found")
        return DistributionError(
            ErrorCode.UPSTREAM_INVALID, f"{dist.registry} answered {exc.status}", status=exc.status
        )
    return DistributionError(ErrorCode.UPSTREAM_UNAVAILABLE, str(exc))


class Upstreams:
    """One RegistryClient per configured registry, plus who-may-read-what."""

    def __init__(
        self,
        registries: Mapping[str, str],
        session: aiohttp.ClientSession,
        metrics: AgentMetrics,
        access: AccessCache,
    ) -> None:
        tokens = TokenCache()
        self.metrics = metrics
        self.access = access
        self.clients = {
            name: RegistryClient(name, url, session, tokens, observe=self._observer(name))
            for name, url in registries.items()
        }

    def _observer(self, registry: str) -> LatencyObserver:
        def observe(kind: str, seconds: float) -> None:
            self.metrics.upstream_seconds.labels(registry, kind).observe(seconds)

        return observe

    def client(self, registry: str) -> RegistryClient:
        return self.clients[registry]

    def record_allowed(self, creds: Credentials | None, dist: DistributionPath) -> None:
        self.access.record((fingerprint(creds), dist.registry, dist.repository), True)

    async def blob_size(self, creds: Credentials | None, dist: DistributionPath) -> int | None:
        """HEAD the blob upstream: its size (None if the registry gave none). Proves that
        ``creds`` may read it, and remembers that; raises UpstreamError otherwise."""
        resp = await self.client(dist.registry).open(
            "HEAD",
            f"/v2/{dist.repository}/blobs/{dist.digest}",
            repository=dist.repository,
            creds=creds,
            kind="blob_head",
        )
        resp.release()
        self.record_allowed(creds, dist)
        return resp.content_length

    async def authorize(self, creds: Credentials | None, dist: DistributionPath) -> None:
        """Raise unless the registry lets ``creds`` read ``dist`` (for content we already hold)."""
        key = (fingerprint(creds), dist.registry, dist.repository)
        known = self.access.lookup(key)
        if known is True:
            return
        if known is False:
            raise challenge_error(dist.registry, f"credentials not accepted for {dist.repository}")
        kind = "manifests" if dist.kind.value == "manifest" else "blobs"
        path = f"/v2/{dist.repository}/{kind}/{dist.reference}"
        try:
            resp = await self.client(dist.registry).open(
                "HEAD", path, repository=dist.repository, creds=creds, kind="auth"
            )
            resp.release()
        except (UpstreamUnauthorized, UpstreamDenied) as exc:
            self.access.record(key, False)
            raise map_upstream_error(exc, dist) from None
        except UpstreamUnavailable as exc:
            if self.access.stale_allowed(key):
                log.warning("registry unreachable, using an earlier yes for %s: %s", key[1:], exc)
                return
            raise map_upstream_error(exc, dist) from None
        except UpstreamError as exc:
            raise map_upstream_error(exc, dist) from None
        self.access.record(key, True)
