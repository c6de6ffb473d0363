"""The HTTPS AdmissionReview endpoint: patches, dry runs, malformed bodies admitted unchanged."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from shoal.webhook.config import WebhookConfig
from shoal.webhook.server import create_app, tls_context

from .k8s_fixtures import BRIEF_REGISTRY, Json, admission_review, apply_json_patch
from .test_webhook_mutate import brief_pod

CONFIG = WebhookConfig.build([BRIEF_REGISTRY])


@pytest.fixture
async def http() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(create_app(CONFIG))) as client:
        yield client


async def post(client: TestClient[web.Request, web.Application], path: str, review: Json) -> Json:
    response = await client.post(path, json=review)
    assert response.status == 200
    body: Json = await response.json()
    return body


def patched(review: Json, answer: Json) -> Json:
    patch = answer["response"].get("patch")
    operations = json.loads(base64.b64decode(patch)) if patch else []
    return apply_json_patch(review["request"]["object"], operations)


class TestAdmission:
    """What the API server gets back for each kind of request."""

    async def test_pod_label_entry(self, http: TestClient) -> None:  # type: ignore[type-arg]
        review = admission_review(brief_pod(), "default", uid="u-1")
        answer = await post(http, "/mutate", review)
        assert answer["response"]["uid"] == "u-1"
        assert answer["response"]["allowed"] is True
        pod = patched(review, answer)
        assert pod["spec"]["imagePullSecrets"][-1] == {"name": "acr-credential-test-registry-p2p"}

    async def test_namespace_entry(self, http: TestClient) -> None:  # type: ignore[type-arg]
        review = admission_review(brief_pod("team-a", label=False), "team-a")
        pod = patched(review, await post(http, "/mutate/namespace", review))
        assert pod["spec"]["containers"][0]["image"].startswith(f"{BRIEF_REGISTRY}:65001/")

    async def test_pod_entry_without_label(self, http: TestClient) -> None:  # type: ignore[type-arg]
        review = admission_review(brief_pod(label=False), "default")
        answer = await post(http, "/mutate", review)
        assert "patch" not in answer["response"]

    async def test_dry_run_gets_the_same_answer(self, http: TestClient) -> None:  # type: ignore[type-arg]
        review = admission_review(brief_pod(), "default", dry_run=True)
        pod = patched(review, await post(http, "/mutate", review))
        assert pod["metadata"]["annotations"]["k8s.aliyun.com/image-accelerate-mode"] == "p2p"

    async def test_not_a_review(self, http: TestClient) -> None:  # type: ignore[type-arg]
        response = await http.post("/mutate", data=b"{not json")
        assert response.status == 400
        response = await http.post("/mutate", json={"request": "x"})
        assert response.status == 400

    @pytest.mark.parametrize(
        "request_",
        [
            {"uid": "u", "object": "x"},
            {"uid": "u", "kind": "Pod", "object": {"metadata": "m", "spec": {}}},
            {"uid": "u", "kind": {"kind": "Pod"}, "operation": "CREATE", "object": {"spec": {"containers": [5]}}},
        ],
    )
    async def test_malformed_objects_are_admitted_unchanged(self, http: TestClient, request_: Json) -> None:  # type: ignore[type-arg]
        """Fuzz finding: a string where an object belongs gave a 500 and a traceback."""
        answer = await post(http, "/mutate", {"apiVersion": "admission.k8s.io/v1", "request": request_})
        assert answer["response"]["allowed"] is True
        assert "patch" not in answer["response"]

    async def test_healthz(self, http: TestClient) -> None:  # type: ignore[type-arg]
        response = await http.get("/healthz")
        assert response.status == 200


class TestTLS:
    """The server speaks HTTPS with the given certificate, as the API server requires."""

    async def test_https(self, tmp_path: Path) -> None:
        cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
        await asyncio.to_thread(
            subprocess.run,
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=shoal-webhook.shoal-system.svc",
                "-addext",
                "subjectAltName=DNS:shoal-webhook.shoal-system.svc",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
        )
        runner = web.AppRunner(create_app(CONFIG))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls_context(str(cert), str(key)))
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        client_ctx = ssl.create_default_context(cafile=str(cert))
        client_ctx.check_hostname = False  # the name is checked by the chart test
        try:
            async with aiohttp.ClientSession() as session:
                review = admission_review(brief_pod(), "default")
                async with session.post(f"https://127.0.0.1:{port}/mutate", json=review, ssl=client_ctx) as response:
                    answer = await response.json()
        finally:
            await runner.cleanup()
        assert answer["response"]["patchType"] == "JSONPatch"
