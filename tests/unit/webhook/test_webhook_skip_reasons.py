"""A Pod that asked for acceleration and was left alone says why: a warning and an annotation."""

from __future__ import annotations

import base64
import json

import pytest
from aiohttp.test_utils import TestClient, TestServer

from shoal.webhook.config import WebhookConfig
from shoal.webhook.mutate import Scope, decide, review_response, warning
from shoal.webhook.server import create_app

from .k8s_fixtures import BRIEF_REGISTRY, Json, admission_review, apply_json_patch, merge_patch
from .test_webhook_mutate import CONFIG, P2P_CONFIG, SKIPPED, brief_pod

PREFIX = "shoal: image acceleration skipped: "


def answer(pod: Json, config: WebhookConfig = CONFIG, scope: Scope = Scope.POD) -> tuple[Json, Json]:
    """The AdmissionResponse for ``pod`` and the Pod as the API server would store it."""
    review = admission_review(pod, pod["metadata"].get("namespace", "default"))
    response = review_response(review, decide(review["request"], scope, config))["response"]
    operations = json.loads(base64.b64decode(response["patch"])) if "patch" in response else []
    return response, apply_json_patch(pod, operations)


def foreign_image() -> Json:
    pod = brief_pod()
    pod["spec"]["containers"][0]["image"] = "ghcr.io/org/app:1"
    return pod


def no_pull_secret() -> Json:
    pod = brief_pod()
    del pod["spec"]["imagePullSecrets"]
    return pod


def windows() -> Json:
    pod: Json = merge_patch(brief_pod(), {"spec": {"nodeSelector": {"kubernetes.io/os": "windows"}}})
    return pod


class TestSkippedPods:
    """Each reason a labelled Pod is left alone reaches kubectl and stays on the Pod."""

    @pytest.mark.parametrize(
        ("pod", "reason"),
        [
            (foreign_image(), "no image from an accelerated registry"),
            (no_pull_secret(), "no pull secret to carry credentials to the alias host"),
            (windows(), "Pod selects Windows nodes"),
        ],
        ids=["foreign-registry", "no-pull-secret", "windows"],
    )
    def test_warning_and_annotation(self, pod: Json, reason: str) -> None:
        response, stored = answer(pod)
        [said] = response["warnings"]
        assert said.startswith(PREFIX)
        assert reason in said
        assert stored["metadata"]["annotations"][SKIPPED] == said.removeprefix(PREFIX)
        assert stored["spec"] == pod["spec"]
        assert P2P_CONFIG not in stored["metadata"]["annotations"]

    def test_existing_annotations_are_kept(self) -> None:
        pod = merge_patch(foreign_image(), {"metadata": {"annotations": {"team": "a"}}})
        _, stored = answer(pod)
        assert stored["metadata"]["annotations"] == {"team": "a", SKIPPED: "no image from an accelerated registry"}

    def test_the_label_prefix_names_the_annotation(self) -> None:
        config = WebhookConfig.build([BRIEF_REGISTRY], label_prefix="shoal.io")
        pod = foreign_image()
        pod["metadata"]["labels"] = {"shoal.io/image-accelerate-mode": "p2p"}
        _, stored = answer(pod, config)
        assert list(stored["metadata"]["annotations"]) == ["shoal.io/p2p-skipped"]


class TestQuietPods:
    """A Pod that did not ask, or that was accelerated, gets no warning and no skip annotation."""

    def test_not_labelled(self) -> None:
        response, stored = answer(brief_pod(label=False))
        assert "warnings" not in response
        assert stored == brief_pod(label=False)

    def test_opted_out_of_a_labelled_namespace(self) -> None:
        pod = brief_pod(label=False)
        pod["metadata"]["labels"] = {"k8s.aliyun.com/image-accelerate-mode": "none"}
        response, _ = answer(pod, scope=Scope.NAMESPACE)
        assert "warnings" not in response

    def test_accelerated(self) -> None:
        response, stored = answer(brief_pod())
        assert "warnings" not in response
        assert SKIPPED not in stored["metadata"]["annotations"]

    def test_already_injected(self) -> None:
        _, injected = answer(brief_pod())
        response, _ = answer(injected, scope=Scope.NAMESPACE)
        assert "warnings" not in response
        assert "patch" not in response


def test_a_warning_is_one_printable_line_within_the_limit() -> None:
    said = warning("pull secret 'a\nb\x07' is missing " + "x" * 400)
    assert said.startswith(PREFIX + "pull secret 'a b?' is missing")
    assert said.isprintable()
    assert len(said) == 256


async def test_the_endpoint_returns_the_warning() -> None:
    async with TestClient(TestServer(create_app(CONFIG))) as client:
        response = await client.post("/mutate", json=admission_review(foreign_image(), "default"))
        body = await response.json()
    assert body["response"]["warnings"] == [PREFIX + "no image from an accelerated registry"]
    assert body["response"]["allowed"] is True
