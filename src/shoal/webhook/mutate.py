"""The admission decision for one Pod, as a pure function: JSONPatch plus Secrets to ensure.

The MutatingWebhookConfiguration has two entries: one selects Pods carrying the accelerate
label (``objectSelector``, path ``/mutate``), one selects Pods in a labelled namespace
(``namespaceSelector``, path ``/mutate/namespace``). The API server evaluates both selectors,
so the webhook never asks it about namespaces. When both fire, the second call sees the
already injected Pod and returns no patch.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from shoal import __version__
from shoal.core.reference import ImageReference, ReferenceError
from shoal.webhook.config import ENABLED_VALUE, WebhookConfig
from shoal.webhook.pullsecrets import derive_secret

Json = dict[str, Any]
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")


class Scope(StrEnum):
    """Which webhook entry delivered the request."""

    POD = "pod"
    NAMESPACE = "namespace"


@dataclass(frozen=True, slots=True)
class Rewrite:
    """One container image moved behind the P2P endpoint."""

    pointer: str
    container: str
    original: str
    image: str


@dataclass(frozen=True, slots=True)
class Decision:
    """What to answer: an empty patch means "admit unchanged"; ``reason`` goes to the log."""

    patch: tuple[Json, ...]
    secrets: tuple[Json, ...]
    reason: str

    @property
    def mutated(self) -> bool:
        return bool(self.patch)


def unchanged(reason: str) -> Decision:
    return Decision((), (), reason)


def escape_pointer(token: str) -> str:
    """RFC 6901: ``k8s.aliyun.com/p2p-config`` -> ``k8s.aliyun.com~1p2p-config``."""
    return token.replace("~", "~0").replace("/", "~1")


def rewrite_image(image: str, config: WebhookConfig) -> str | None:
    """``reg/team/app:v1`` -> ``<endpoint>/reg/team/app:v1`` if ``reg`` is accelerated.

    Docker Hub short names are normalised (``nginx`` -> ``docker.io/library/nginx:latest``)
    so the agent always sees the registry as the first path component.
    """
    try:
        ref = ImageReference.parse(image)
    except ReferenceError:
        return None
    if ref.registry not in config.registries:
        return None
    return f"{config.endpoint}/{ref}"


def plan_rewrites(spec: Json, config: WebhookConfig, lists: tuple[str, ...] = CONTAINER_LISTS) -> list[Rewrite]:
    rewrites: list[Rewrite] = []
    for list_name in lists:
        for index, container in enumerate(spec.get(list_name) or []):
            image = container.get("image")
            if not isinstance(image, str):
                continue
            new = rewrite_image(image, config)
            if new is not None:
                pointer = f"/spec/{list_name}/{index}/image"
                rewrites.append(Rewrite(pointer, container.get("name", ""), image, new))
    return rewrites


def p2p_config(rewrites: list[Rewrite], config: WebhookConfig) -> str:
    """The ``<prefix>/p2p-config`` annotation: enough to undo or audit the rewrite."""
    return json.dumps(
        {
            "version": __version__,
            "endpoint": config.endpoint,
            "images": [{"container": r.container, "original": r.original, "image": r.image} for r in rewrites],
        },
        separators=(",", ":"),
        sort_keys=True,
    )


def enabled(pod: Json, scope: Scope, config: WebhookConfig) -> bool:
    """The Pod's own label wins: ``p2p`` enables, any other value opts out of a namespace."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    value = labels.get(config.mode_key)
    if value is not None:
        return bool(value == ENABLED_VALUE)
    return scope is Scope.NAMESPACE


def decide(request: Json, scope: Scope, config: WebhookConfig, secrets: Mapping[str, Json] | None) -> Decision:
    """Decide for one AdmissionRequest; ``secrets`` are the Secrets of its namespace by name.

    ``secrets`` is None while the Secret cache is not synced; a Pod that references pull
    secrets is then left alone, because a missing secret cannot be told from an unknown one.

    When in doubt the answer is "unchanged": a Pod must never become unpullable.
    """
    if (request.get("kind") or {}).get("kind") != "Pod":
        return unchanged("not a Pod")
    pod = request.get("object")
    if not isinstance(pod, dict) or not isinstance(pod.get("spec"), dict):
        return unchanged("no Pod object")
    operation, subresource = request.get("operation"), request.get("subResource") or ""
    if operation == "UPDATE" and subresource == "ephemeralcontainers":
        return _decide_ephemeral(pod, config)
    if operation != "CREATE" or subresource:
        return unchanged(f"operation {operation} {subresource} is not handled")
    if not enabled(pod, scope, config):
        return unchanged("acceleration not enabled for this Pod")
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    if config.config_key in annotations:
        return unchanged("already injected")
    rewrites = plan_rewrites(pod["spec"], config)
    if not rewrites:
        return unchanged("no image from an accelerated registry")

    names = [str(ref.get("name", "")) for ref in pod["spec"].get("imagePullSecrets") or [] if ref]
    derived: list[Json] = []
    if names and secrets is None:
        return unchanged("pull secret cache not ready")
    for name in names:
        assert secrets is not None
        original = secrets.get(name)
        if original is None:
            return unchanged(f"pull secret {name!r} is missing")
        secret = derive_secret(original, config)
        if secret is not None and secret["metadata"]["name"] not in names:
            derived.append(secret)

    patch: list[Json] = [{"op": "replace", "path": r.pointer, "value": r.image} for r in rewrites]
    new_annotations = {
        config.mode_key: ENABLED_VALUE,
        config.config_key: p2p_config(rewrites, config),
    }
    if "annotations" not in (pod.get("metadata") or {}):
        patch.append({"op": "add", "path": "/metadata/annotations", "value": new_annotations})
    else:
        patch.extend(
            {"op": "add", "path": f"/metadata/annotations/{escape_pointer(k)}", "value": v}
            for k, v in new_annotations.items()
        )
    refs = [{"name": s["metadata"]["name"]} for s in derived]
    if refs and "imagePullSecrets" not in pod["spec"]:
        patch.append({"op": "add", "path": "/spec/imagePullSecrets", "value": refs})
    else:
        patch.extend({"op": "add", "path": "/spec/imagePullSecrets/-", "value": r} for r in refs)
    return Decision(tuple(patch), tuple(derived), f"rewrote {len(rewrites)} image(s)")


def _decide_ephemeral(pod: Json, config: WebhookConfig) -> Decision:
    """``kubectl debug`` adds ephemeral containers to a running Pod.

    Pull secrets cannot change after creation, so only Pods injected at creation (which
    already carry the derived secrets) get their new ephemeral images rewritten.
    """
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    if config.config_key not in annotations:
        return unchanged("ephemeral container in a Pod that was not injected")
    rewrites = plan_rewrites(pod["spec"], config, ("ephemeralContainers",))
    if not rewrites:
        return unchanged("no ephemeral image from an accelerated registry")
    patch = tuple({"op": "replace", "path": r.pointer, "value": r.image} for r in rewrites)
    return Decision(patch, (), f"rewrote {len(rewrites)} ephemeral image(s)")


def review_response(review: Json, decision: Decision) -> Json:
    """The AdmissionReview v1 answer; always ``allowed`` (the webhook never blocks a Pod)."""
    request = review.get("request") or {}
    response: Json = {"uid": request.get("uid", ""), "allowed": True}
    if decision.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(list(decision.patch)).encode()).decode()
    return {
        "apiVersion": review.get("apiVersion", "admission.k8s.io/v1"),
        "kind": "AdmissionReview",
        "response": response,
    }
