"""HTTPS edge of the webhook: AdmissionReview in, AdmissionReview out, never a blocked Pod.

Handlers only parse and call the pure ``decide``; they have no side effects and read nothing
but the request, because anyone who can reach the port can post a review naming any
namespace. Derived pull secrets are the controller's job, for Pods it sees in the API. Any
failure answers "admit unchanged".
"""

from __future__ import annotations

import logging
import ssl
import time
from typing import Any

from aiohttp import web

from shoal.webhook import metrics
from shoal.webhook.config import WebhookConfig
from shoal.webhook.mutate import Scope, decide, review_response, unchanged

log = logging.getLogger(__name__)
Json = dict[str, Any]

CONFIG_KEY = web.AppKey("config", WebhookConfig)


async def admit(request: web.Request, scope: Scope) -> web.Response:
    try:
        review = await request.json()
        admission = review["request"]
        if not isinstance(admission, dict):
            raise TypeError("request is not an object")
    except (ValueError, KeyError, TypeError) as exc:
        raise web.HTTPBadRequest(text=f"not an AdmissionReview: {exc}") from None
    namespace = str(admission.get("namespace") or "")
    started, outcome = time.monotonic(), metrics.ERROR
    try:
        decision = decide(admission, scope, request.app[CONFIG_KEY])
        outcome = metrics.MUTATED if decision.mutated else metrics.SKIPPED if decision.skipped else metrics.UNCHANGED
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


async def mutate_pod(request: web.Request) -> web.Response:
    return await admit(request, Scope.POD)


async def mutate_namespace(request: web.Request) -> web.Response:
    return await admit(request, Scope.NAMESPACE)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def create_app(config: WebhookConfig, *, webhook_metrics: metrics.WebhookMetrics | None = None) -> web.Application:
    """Routes: ``POST /mutate`` (Pod label entry), ``POST /mutate/namespace``, ``GET /healthz``, ``GET /metrics``."""
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[CONFIG_KEY] = config
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
