"""HTTPS edge of the webhook: AdmissionReview in, AdmissionReview out, never a blocked Pod.

Handlers only parse, call the pure ``decide`` and, unless the request is a dry run, ask the
``SecretSource`` to create the derived pull secrets before answering. Any failure on that
path answers "admit unchanged".
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web

from shoal.webhook import metrics
from shoal.webhook.config import WebhookConfig
from shoal.webhook.mutate import Decision, Scope, decide, review_response, unchanged

log = logging.getLogger(__name__)
Json = dict[str, Any]
ENSURE_TIMEOUT = 2.0  # below the chart's 3 s webhook timeout: answer before the API server gives up


class SecretSource(Protocol):
    """What the server needs from the controller: a Secret cache and a way to write."""

    def secrets_in(self, namespace: str) -> Mapping[str, Json] | None:
        """The namespace's pull secrets by name, or None until the cache is synced."""
        ...

    async def ensure(self, secrets: Sequence[Json]) -> None:
        """Create or update derived Secrets; raises on failure."""
        ...


CONFIG_KEY = web.AppKey("config", WebhookConfig)
SOURCE_KEY = web.AppKey("source", SecretSource)
TIMEOUT_KEY = web.AppKey("ensure_timeout", float)


async def admit(request: web.Request, scope: Scope) -> web.Response:
    try:
        review = await request.json()
        admission = review["request"]
        if not isinstance(admission, dict):
            raise TypeError("request is not an object")
    except (ValueError, KeyError, TypeError) as exc:
        raise web.HTTPBadRequest(text=f"not an AdmissionReview: {exc}") from None
    config, source = request.app[CONFIG_KEY], request.app[SOURCE_KEY]
    namespace = str(admission.get("namespace") or "")
    started, outcome = time.monotonic(), metrics.ERROR
    try:
        decision = decide(admission, scope, config, source.secrets_in(namespace))
        wanted = decision
        decision = await _apply_side_effects(request.app, admission, decision)
        outcome = (
            metrics.ERROR if decision is not wanted else metrics.MUTATED if decision.mutated else metrics.UNCHANGED
        )
    except Exception as exc:  # when in doubt, do not mutate
        log.exception("admission failed; admitting unchanged")
        decision = unchanged(f"internal error: {exc}")
    request.app[metrics.METRICS_KEY].observe(str(scope), outcome, time.monotonic() - started)
    pod = admission.get("object")
    pod_meta = pod.get("metadata") if isinstance(pod, dict) else None
    if not isinstance(pod_meta, dict):
        pod_meta = {}
    log.info(
        "admission %s/%s scope=%s mutated=%s: %s",
        namespace,
        pod_meta.get("name") or pod_meta.get("generateName") or "?",
        scope,
        decision.mutated,
        decision.reason,
    )
    return web.json_response(review_response(review, decision))


async def _apply_side_effects(app: web.Application, admission: Json, decision: Decision) -> Decision:
    if not decision.secrets or admission.get("dryRun"):
        return decision
    try:
        async with asyncio.timeout(app[TIMEOUT_KEY]):
            await app[SOURCE_KEY].ensure(decision.secrets)
    except Exception as exc:
        log.warning("could not ensure derived pull secrets: %r", exc)
        app[metrics.METRICS_KEY].secret_sync_errors.labels("admission").inc()
        return unchanged(f"could not create derived pull secret: {exc!r}")
    return decision


async def mutate_pod(request: web.Request) -> web.Response:
    return await admit(request, Scope.POD)


async def mutate_namespace(request: web.Request) -> web.Response:
    return await admit(request, Scope.NAMESPACE)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def create_app(
    config: WebhookConfig,
    source: SecretSource,
    *,
    ensure_timeout: float = ENSURE_TIMEOUT,
    webhook_metrics: metrics.WebhookMetrics | None = None,
) -> web.Application:
    """Routes: ``POST /mutate`` (Pod label entry), ``POST /mutate/namespace``, ``GET /healthz``, ``GET /metrics``."""
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[CONFIG_KEY] = config
    app[SOURCE_KEY] = source
    app[TIMEOUT_KEY] = ensure_timeout
    app[metrics.METRICS_KEY] = webhook_metrics or metrics.WebhookMetrics()
    app.router.add_get("/metrics", app[metrics.METRICS_KEY].handler)
    app.router.add_post("/mutate", mutate_pod)
    app.router.add_post("/mutate/namespace", mutate_namespace)
    app.router.add_get("/healthz", healthz)
    return app


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context
