"""AdmissionReview requests through the webhook's public decision functions.

``decide`` must answer every request with a Decision (the webhook never blocks a Pod, and an
exception there is logged as a crash), and ``review_response`` must always say ``allowed``.
Only the public functions are called: the webhook itself is not changed here.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from shoal.webhook.config import WebhookConfig
from shoal.webhook.mutate import Decision, Scope, decide, review_response

from .harness import counted, fuzzed
from .strategies import json_values

CONFIG = WebhookConfig.build(["registry.example.com", "docker.io", "ghcr.io"])
MODE = "k8s.aliyun.com/image-accelerate-mode"

images = st.sampled_from(
    [
        "registry.example.com/team/app:v1",
        "nginx",
        "nginx:1.27",
        "docker.io/library/busybox@sha256:" + "a" * 64,
        "ghcr.io/o/r:1",
        "quay.io/x/y:2",
        "registry.example.com:5000/a:1",
        "",
        ":",
        "@",
        "a" * 300,
        "UPPER/x:1",
    ]
) | st.text(max_size=40)
words = st.text(max_size=20)
labels = st.dictionaries(
    st.sampled_from([MODE, "app", "shoal.io/skip-injection"]) | words,
    st.sampled_from(["p2p", "off", ""]) | words,
    max_size=3,
)
containers = st.lists(st.fixed_dictionaries({"name": words, "image": images}), max_size=3)
pods = st.fixed_dictionaries(
    {
        "metadata": st.fixed_dictionaries(
            {"name": words, "namespace": st.just("default")},
            optional={"labels": labels, "annotations": st.dictionaries(words, words, max_size=2)},
        ),
        "spec": st.fixed_dictionaries(
            {"containers": containers},
            optional={
                "initContainers": containers,
                "ephemeralContainers": containers,
                "imagePullSecrets": st.lists(st.fixed_dictionaries({"name": words}), max_size=2),
            },
        ),
    }
)
requests = st.fixed_dictionaries(
    {
        "uid": words,
        "kind": st.fixed_dictionaries({"group": st.just(""), "version": st.just("v1"), "kind": st.just("Pod")}),
        "namespace": st.just("default"),
        "operation": st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT"]),
        "object": pods,
    },
    optional={"subResource": st.sampled_from(["", "ephemeralcontainers", "status"]), "dryRun": st.booleans()},
)


def dockerconfig_secret(name: str, auths: Any) -> dict[str, Any]:
    data = base64.b64encode(json.dumps({"auths": auths}).encode()).decode()
    return {
        "metadata": {"name": name, "namespace": "default", "uid": "u"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": data},
    }


secret_maps = st.none() | st.dictionaries(
    words,
    st.builds(dockerconfig_secret, words, st.dictionaries(images, st.fixed_dictionaries({"auth": words}), max_size=2))
    | json_values,
    max_size=3,
)


def check(request: dict[str, Any], scope: Scope, secrets: Any) -> None:
    decision = decide(request, scope, CONFIG)
    assert isinstance(decision, Decision)
    json.dumps(list(decision.patch))
    aliases = {CONFIG.alias(registry) for registry in CONFIG.registries}
    for op in decision.patch:
        if op["op"] == "replace" and op["path"].endswith("/image"):
            assert op["value"].split("/", 1)[0] in aliases
    answer = review_response({"apiVersion": "admission.k8s.io/v1", "request": request}, decision)
    assert answer["response"]["allowed"] is True
    assert answer["response"]["uid"] == request.get("uid", "")


@fuzzed
@given(requests, st.sampled_from(list(Scope)), secret_maps)
@counted("admission review (API-server shapes)")
def test_api_server_shaped_requests(request: dict[str, Any], scope: Scope, secrets: Any) -> None:
    """Requests shaped as the API server sends them (validated Pods), with hostile values."""
    check(request, scope, secrets)


@fuzzed
@given(st.dictionaries(st.sampled_from(["uid", "kind", "object", "operation", "subResource"]), json_values))
@example({"kind": "Pod"})
@example({"kind": {"kind": "Pod"}, "operation": "CREATE", "object": {"spec": {"containers": [5]}, "metadata": {}}})
@counted("admission review (any JSON)")
def test_any_json_request(request: dict[str, Any]) -> None:
    check(request, Scope.NAMESPACE, {})
