"""The rendered MutatingWebhookConfiguration's selectors, evaluated as the API server does,
routing kubectl-made Pods to the webhook's decision: Pod label, namespace label, both, neither."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.ops.helm import build_values, manifest_documents, render
from shoal.webhook.config import WebhookConfig
from shoal.webhook.mutate import Scope, decide

from .k8s_fixtures import (
    BRIEF_REGISTRY,
    admission_review,
    apply_json_patch,
    load,
)
from .test_webhook_mutate import brief_pod

Json = dict[str, Any]
PATH_SCOPE = {"/mutate": Scope.POD, "/mutate/namespace": Scope.NAMESPACE}
CONFIG = WebhookConfig.build([BRIEF_REGISTRY])


def selector_matches(selector: Json | None, labels: dict[str, str]) -> bool:
    """metav1.LabelSelector semantics (matchLabels AND matchExpressions); absent = everything."""
    if not selector:
        return True
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def webhook_entries() -> list[Json]:
    docs = manifest_documents(render(build_values((), (f"registries={BRIEF_REGISTRY}",))))
    (mwc,) = [d for d in docs if d["kind"] == "MutatingWebhookConfiguration"]
    entries: list[Json] = mwc["webhooks"]
    return entries


def admit_through_api_server(pod: Json, namespace: Json) -> tuple[Json, list[str]]:
    """Call each matching entry in order on the current object, as the API server does."""
    called = []
    ns_labels = namespace["metadata"].get("labels") or {}
    name = namespace["metadata"]["name"]
    for entry in webhook_entries():
        labels = pod["metadata"].get("labels") or {}
        if not (
            selector_matches(entry.get("namespaceSelector"), ns_labels)
            and selector_matches(entry.get("objectSelector"), labels)
        ):
            continue
        called.append(entry["name"])
        scope = PATH_SCOPE[entry["clientConfig"]["service"]["path"]]
        decision = decide(admission_review(pod, name)["request"], scope, CONFIG)
        pod = apply_json_patch(pod, list(decision.patch))
    return pod, called


ACCELERATED_NS = load("namespace-accelerated")
PLAIN_NS = {"metadata": {"name": "default", "labels": {"kubernetes.io/metadata.name": "default"}}}


@pytest.mark.parametrize(
    ("pod_label", "namespace", "expected_calls", "rewritten"),
    [
        (True, PLAIN_NS, ["pod.image-accelerate.shoal.io"], True),
        (False, ACCELERATED_NS, ["namespace.image-accelerate.shoal.io"], True),
        (True, ACCELERATED_NS, ["pod.image-accelerate.shoal.io", "namespace.image-accelerate.shoal.io"], True),
        (False, PLAIN_NS, [], False),
    ],
    ids=["pod-label", "namespace-label", "both", "neither"],
)
def test_routing(pod_label: bool, namespace: Json, expected_calls: list[str], rewritten: bool) -> None:
    pod = brief_pod(namespace["metadata"]["name"], label=pod_label)
    result, called = admit_through_api_server(pod, namespace)
    assert called == expected_calls
    image = result["spec"]["containers"][0]["image"]
    assert image.startswith(f"{BRIEF_REGISTRY}:65001/") is rewritten
    if rewritten:
        assert result["spec"]["imagePullSecrets"] == [
            {"name": "test-registry"},
            {"name": "acr-credential-test-registry-p2p"},
        ]


def test_shoal_pods_are_not_sent() -> None:
    pod = brief_pod("team-a")
    pod["metadata"]["labels"]["shoal.io/skip-injection"] = "true"
    result, called = admit_through_api_server(pod, ACCELERATED_NS)
    assert called == []
    assert result == pod
