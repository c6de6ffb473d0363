"""The webhook's /metrics: admissions by decision, their latency, pull-secret errors."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from shoal.core.promtext import flatten
from shoal.webhook.server import create_app

from .k8s_fixtures import admission_review
from .test_webhook_mutate import brief_pod
from .test_webhook_server import CONFIG, RecordingSource


async def scrape(client: TestClient[web.Request, web.Application]) -> dict[str, float]:
    response = await client.get("/metrics")
    assert response.status == 200
    return flatten(await response.text())


class TestWebhookMetrics:
    """Each admission is counted under the decision it got; failures are not hidden as "unchanged"."""

    async def test_mutated_unchanged_and_error(self) -> None:
        failing = RecordingSource(fail=RuntimeError("apiserver down"))
        async with (
            TestClient(TestServer(create_app(CONFIG, RecordingSource(), ensure_timeout=0.5))) as ok,
            TestClient(TestServer(create_app(CONFIG, failing, ensure_timeout=0.5))) as broken,
        ):
            await ok.post("/mutate", json=admission_review(brief_pod(), "default"))
            plain = brief_pod()
            plain["spec"]["containers"][0]["image"] = "quay.io/other/app:1"
            await ok.post("/mutate", json=admission_review(plain, "default"))
            await broken.post("/mutate", json=admission_review(brief_pod(), "default"))
            good, bad = await scrape(ok), await scrape(broken)
        assert good["shoal_webhook_admissions_total{decision=mutated,scope=pod}"] == 1
        assert good["shoal_webhook_admissions_total{decision=unchanged,scope=pod}"] == 1
        assert good["shoal_webhook_admission_duration_seconds_count{scope=pod}"] == 2
        assert good["shoal_webhook_pull_secret_sync_errors_total{stage=admission}"] == 0
        assert bad["shoal_webhook_admissions_total{decision=error,scope=pod}"] == 1
        assert bad["shoal_webhook_pull_secret_sync_errors_total{stage=admission}"] == 1


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
