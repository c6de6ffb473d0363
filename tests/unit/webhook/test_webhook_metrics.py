"""The webhook's /metrics: admissions by decision, their latency, pull-secret errors."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from shoal.core.promtext import flatten
from shoal.webhook.server import create_app

from .k8s_fixtures import admission_review
from .test_webhook_mutate import brief_pod
from .test_webhook_server import CONFIG


async def scrape(client: TestClient[web.Request, web.Application]) -> dict[str, float]:
    response = await client.get("/metrics")
    assert response.status == 200
    return flatten(await response.text())


class TestWebhookMetrics:
    """Each admission is counted under the decision it got; failures are not hidden as "unchanged"."""

    async def test_mutated_skipped_and_unchanged(self) -> None:
        async with TestClient(TestServer(create_app(CONFIG))) as ok:
            await ok.post("/mutate", json=admission_review(brief_pod(), "default"))
            foreign = brief_pod()
            foreign["spec"]["containers"][0]["image"] = "quay.io/other/app:1"
            await ok.post("/mutate", json=admission_review(foreign, "default"))
            await ok.post("/mutate", json=admission_review(brief_pod(label=False), "default"))
            good = await scrape(ok)
        assert good["shoal_webhook_admissions_total{decision=mutated,scope=pod}"] == 1
        assert good["shoal_webhook_admissions_total{decision=skipped,scope=pod}"] == 1
        assert good["shoal_webhook_admissions_total{decision=unchanged,scope=pod}"] == 1
        assert good["shoal_webhook_admission_duration_seconds_count{scope=pod}"] == 3
        assert good["shoal_webhook_pull_secret_sync_errors_total{stage=controller}"] == 0


class UnreachableApi:
    """A CoreV1Api whose API server cannot be reached."""

    def list_secret_for_all_namespaces(self, **kwargs: object) -> None:
        raise ConnectionRefusedError("api server unreachable")


class TestControllerErrors:
    """A failing Secret list or watch is counted under stage=controller (and retried)."""

    def test_unreachable_api_server(self) -> None:
        import time

        from shoal.webhook.controller import SecretSync
        from shoal.webhook.metrics import WebhookMetrics

        metrics = WebhookMetrics()
        counter = metrics.secret_sync_errors.labels("controller")

        def count(stage: str) -> float | None:
            return metrics.registry.get_sample_value("shoal_webhook_pull_secret_sync_errors_total", {"stage": stage})

        sync = SecretSync(UnreachableApi(), CONFIG, retry_delay=0.01)
        sync.on_error = counter.inc
        thread = sync.start()
        try:
            deadline = time.monotonic() + 10
            while (count("controller") or 0) < 2:  # retried, and counted each time
                assert time.monotonic() < deadline, "no controller error counted"
                time.sleep(0.01)
        finally:
            sync.stop()
            thread.join(10)
        assert not sync.synced
        assert count("admission") is None  # admissions write nothing, so they cannot fail to
