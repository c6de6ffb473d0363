"""The configured registries, the access check for cached content, and upstream error mapping."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import aiohttp

from shoal.agent.access import AccessCache, AccessKey
from shoal.agent.metrics import AgentMetrics
from shoal.agent.stale_access import StaleAccess
from shoal.core.digest import Digest
from shoal.oci.auth import Credentials, TokenCache
from shoal.oci.client import (
    Fallback,
    LatencyObserver,
    RegistryClient,
    UpstreamDenied,
    UpstreamError,
    UpstreamStatus,
    UpstreamUnauthorized,
    UpstreamUnavailable,
)
from shoal.oci.distribution import DistributionPath, PathKind
from shoal.oci.errors import DistributionError, ErrorCode
from shoal.oci.mediatypes import DEFAULT_ACCEPT

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
    if isinstance(exc, UpstreamUnavailable):
        return unavailable_error(dist, exc.cause)
    return DistributionError(ErrorCode.UPSTREAM_UNAVAILABLE, str(exc))


def unavailable_error(dist: DistributionPath, cause: str) -> DistributionError:
    """The registry cannot answer and nothing held may stand in: say which registry and why."""
    what = f"{dist.registry}/{dist.repository}" + (
        f"{'@' if dist.digest is not None else ':'}{dist.reference}" if dist.reference else ""
    )
    return DistributionError(
        ErrorCode.UPSTREAM_UNAVAILABLE,
        f"registry {dist.registry} cannot be reached ({cause}), and {what} is not held for these credentials",
    )


class StaleRefused(DistributionError):
    """Held, but the registry cannot answer and did not confirm these credentials for the
    repository within the grace (here: a peer may have seen it do so)."""

    def __init__(self, code: ErrorCode, message: str, unavailable: UpstreamUnavailable, **kw: Any) -> None:
        super().__init__(code, message, **kw)
        self.unavailable = unavailable


def stale_refusal(dist: DistributionPath, creds: Credentials | None, exc: UpstreamUnavailable) -> StaleRefused:
    """401 (send credentials) or 403 for held content, never the content."""
    message = (
        f"registry {dist.registry} cannot be reached ({exc.cause}), and it has not confirmed these "
        f"credentials for {dist.repository} within the outage grace"
    )
    if creds is None:
        challenge = challenge_error(dist.registry, message)
        return StaleRefused(ErrorCode.UNAUTHORIZED, message, exc, headers=challenge.headers)
    return StaleRefused(ErrorCode.DENIED, message, exc)


class Upstreams:
    """One RegistryClient per configured registry, plus who-may-read-what."""

    def __init__(
        self,
        registries: Mapping[str, str],
        session: aiohttp.ClientSession,
        metrics: AgentMetrics,
        access: AccessCache,
        stale: StaleAccess | None = None,
        *,
        header_timeout: float | None = None,
    ) -> None:
        tokens = TokenCache()
        self.metrics = metrics
        self.access = access
        self.stale = stale
        self.clients = {
            name: RegistryClient(
                name,
                url,
                session,
                tokens,
                observe=self._observer(name),
                header_timeout=header_timeout,
                breaker=None if stale is None else stale.breakers.get(name),
            )
            for name, url in registries.items()
        }

    def _observer(self, registry: str) -> LatencyObserver:
        def observe(kind: str, seconds: float) -> None:
            self.metrics.upstream_seconds.labels(registry, kind).observe(seconds)

        return observe

    def client(self, registry: str) -> RegistryClient:
        return self.clients[registry]

    def record_allowed(self, creds: Credentials | None, dist: DistributionPath, digest: Digest | None = None) -> None:
        """The registry just served ``digest`` (default: the one asked for) of this repository
        to these credentials."""
        digest = digest or dist.digest
        if digest is not None:
            self.access.record(AccessKey.of(creds, dist.registry, dist.repository, digest), True)
            if self.stale is not None:
                self.stale.confirmed(creds, dist.registry, dist.repository, [str(digest)])

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

    async def authorize(
        self, creds: Credentials | None, dist: DistributionPath, fallback: Fallback | None = None
    ) -> None:
        """Raise unless the registry confirms that ``dist.repository`` holds ``dist.digest``
        for ``creds``: asked before any cached byte of it goes to the client.

        One HEAD of that blob or manifest in that repository with the client's own
        credentials, its answer cached per (credentials, registry, repository, digest). A
        manifest HEAD carries the same ``Accept`` list as a GET: without it distribution
        answers 404 for OCI manifests and indexes. The registry is waited for briefly only
        when the held copy may go to these credentials without it (or ``fallback`` says
        something else may): else as long as a direct pull would wait."""
        assert dist.digest is not None
        key = AccessKey.of(creds, dist.registry, dist.repository, dist.digest)
        known = self.access.lookup(key)
        if known is True:
            return
        if known is False:
            raise challenge_error(dist.registry, f"{dist.repository}@{dist.digest}: credentials not accepted")
        manifest = dist.kind is PathKind.MANIFEST
        path = f"/v2/{dist.repository}/{'manifests' if manifest else 'blobs'}/{dist.digest}"
        stale = self.stale

        async def held() -> bool:
            if stale is not None and stale.may_serve(creds, dist.registry, dist.repository, str(dist.digest)):
                return True
            return fallback is not None and await fallback()

        try:
            resp = await self.client(dist.registry).open(
                "HEAD",
                path,
                repository=dist.repository,
                creds=creds,
                headers={"Accept": DEFAULT_ACCEPT} if manifest else None,
                kind="auth",
                fallback=held,
            )
            resp.release()
        except (UpstreamUnauthorized, UpstreamDenied):
            self.access.record(key, False)
            self.metrics.access_checks.labels("refused").inc()
            raise
        except UpstreamStatus:  # 404: this repository does not hold this digest
            self.metrics.access_checks.labels("refused").inc()
            raise
        except UpstreamUnavailable as exc:
            if self.stale is None or not self.stale.enabled:
                raise
            if not self.stale.may_serve(creds, dist.registry, dist.repository, str(dist.digest)):
                self.metrics.access_checks.labels("refused").inc()
                raise stale_refusal(dist, creds, exc) from None
            self.metrics.access_checks.labels("stale").inc()
            self.stale.served(dist.kind.value, dist.registry, dist.repository, str(dist.digest), str(dist.digest))
            return
        self.metrics.access_checks.labels("allowed").inc()
        self.access.record(key, True)
        if self.stale is not None:
            self.stale.confirmed(creds, dist.registry, dist.repository, [str(dist.digest)])
