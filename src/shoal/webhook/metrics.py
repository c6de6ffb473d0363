"""Prometheus metrics of the webhook: admissions by decision, their latency, pull-secret errors.

The webhook admits a Pod unchanged whenever something goes wrong, so without these numbers
a broken webhook looks like a working one whose Pods simply are not accelerated. The
registry is per app (several apps share a test process).
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

MUTATED = "mutated"
UNCHANGED = "unchanged"
SKIPPED = "skipped"
"""the Pod asked for acceleration and was left alone, with a warning saying why."""
ERROR = "error"
"""admitted unchanged because something failed (an internal error)."""


class WebhookMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.admissions = Counter(
            "shoal_webhook_admissions",
            "Admission reviews answered, by entry point (pod label or namespace) and decision "
            "(mutated; skipped: asked for acceleration, left alone with a warning; unchanged; "
            "error: admitted unchanged because something failed)",
            ["scope", "decision"],
            registry=r,
        )
        self.admission_seconds = Histogram(
            "shoal_webhook_admission_duration_seconds",
            "Time to answer an admission review",
            ["scope"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5),
            registry=r,
        )
        self.secret_sync_errors = Counter(
            "shoal_webhook_pull_secret_sync_errors",
            "Derived pull secrets that could not be created or updated, or failed watches, by stage "
            "(controller: the only writer, for Pods it sees in the API)",
            ["stage"],
            registry=r,
        )
        self.secret_sync_errors.labels("controller")

    def observe(self, scope: str, decision: str, seconds: float) -> None:
        self.admissions.labels(scope, decision).inc()
        self.admission_seconds.labels(scope).observe(seconds)

    async def handler(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


METRICS_KEY = web.AppKey("metrics", WebhookMetrics)
