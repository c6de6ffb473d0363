"""The admission decision for one Pod, as a pure function of the AdmissionRequest: a JSONPatch.

The MutatingWebhookConfiguration has two entries: one selects Pods carrying the accelerate
label (``objectSelector``, path ``/mutate``), one selects Pods in a labelled namespace
(``namespaceSelector``, path ``/mutate/namespace``). The API server evaluates both selectors,
so the webhook never asks it about namespaces. When both fire, the second call sees the
already injected Pod and returns no patch.

Images move to their registry's alias host (``harbor.local:5000/team/app:v1`` ->
``harbor.local:65001/team/app:v1``), which node-config routes to the agent with the registry
as fallback, so a rewritten Pod pulls on a node whose agent is down or absent. Images move
only in Pods that name pull secrets: each gets a derived secret (its credentials re-keyed to
the alias hosts, made by the controller) added beside it. Credentials that come from the node
(kubelet credential providers, the node's config.json) name the original host and would not
follow, so a Pod without pull secrets is left alone unless the operator says otherwise.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from shoal import __version__
from shoal.core.reference import ImageReference, ReferenceError
from shoal.webhook.config import ENABLED_VALUE, WebhookConfig
from shoal.webhook.pullsecrets import USES_DERIVED_LABEL, derived_names

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
    registry: str


@dataclass(frozen=True, slots=True)
class Decision:
    """What to answer: an empty patch means "admit unchanged"; ``reason`` goes to the log.

    ``skipped``: the Pod asked for acceleration and is left alone; ``reason`` then also goes
    to the person who created it (an AdmissionResponse warning, which kubectl prints) and
    onto the Pod (the ``<prefix>/p2p-skipped`` annotation, the only change in ``patch``).
    """

    patch: tuple[Json, ...]
    reason: str
    skipped: bool = False

    @property
    def mutated(self) -> bool:
        """True when images were rewritten (a skip annotation alone does not count)."""
        return bool(self.patch) and not self.skipped


def unchanged(reason: str) -> Decision:
    return Decision((), reason)


def _annotate(pod: Json, annotations: dict[str, str]) -> list[Json]:
    if "annotations" not in (pod.get("metadata") or {}):
        return [{"op": "add", "path": "/metadata/annotations", "value": annotations}]
    return [
        {"op": "add", "path": f"/metadata/annotations/{escape_pointer(k)}", "value": v} for k, v in annotations.items()
    ]


def skipped(pod: Json, config: WebhookConfig, reason: str) -> Decision:
    """Leave a Pod that asked for acceleration alone, and record why on it."""
    return Decision(tuple(_annotate(pod, {config.skipped_key: reason})), reason, skipped=True)


def escape_pointer(token: str) -> str:
    """RFC 6901: ``k8s.aliyun.com/p2p-config`` -> ``k8s.aliyun.com~1p2p-config``."""
    return token.replace("~", "~0").replace("/", "~1")


def _accelerated(image: str, config: WebhookConfig) -> ImageReference | None:
    try:
        ref = ImageReference.parse(image)
    except ReferenceError:
        return None
    return ref if ref.registry in config.registries else None


def rewrite_image(image: str, config: WebhookConfig) -> str | None:
    """``reg:5000/team/app:v1`` -> ``reg:65001/team/app:v1`` (the alias host) if ``reg:5000``
    is accelerated, else None. Docker Hub short names are normalised (``nginx`` ->
    ``docker.io:65001/library/nginx:latest``): the alias names the registry.
    """
    ref = _accelerated(image, config)
    return None if ref is None else _alias_image(ref, config)


def _alias_image(ref: ImageReference, config: WebhookConfig) -> str:
    return f"{config.alias(ref.registry)}/{ref.repository}{ref.suffix()}"


def plan_rewrites(spec: Json, config: WebhookConfig, lists: tuple[str, ...] = CONTAINER_LISTS) -> list[Rewrite]:
    rewrites: list[Rewrite] = []
    for list_name in lists:
        for index, container in enumerate(spec.get(list_name) or []):
            image = container.get("image")
            if not isinstance(image, str):
                continue
            ref = _accelerated(image, config)
            if ref is not None:
                pointer = f"/spec/{list_name}/{index}/image"
                new = _alias_image(ref, config)
                rewrites.append(Rewrite(pointer, container.get("name", ""), image, new, ref.registry))
    return rewrites


def p2p_config(rewrites: list[Rewrite], config: WebhookConfig) -> str:
    """The ``<prefix>/p2p-config`` annotation: enough to undo or audit the rewrite."""
    return json.dumps(
        {
            "version": __version__,
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


VIRTUAL_NODE_TAINT = "virtual-kubelet.io/provider"


def runs_without_node_config(spec: Json) -> str | None:
    """Why the Pod is bound for a node where node-config cannot run, or None.

    Windows nodes (no agent, no certs.d the chart writes) and virtual-kubelet nodes (ACI,
    Fargate-like providers run no DaemonSets) would have no way back from the alias host.
    """
    selector = spec.get("nodeSelector") or {}
    if selector.get("kubernetes.io/os") == "windows":
        return "Pod selects Windows nodes"
    for toleration in spec.get("tolerations") or []:
        if isinstance(toleration, dict) and toleration.get("key") == VIRTUAL_NODE_TAINT:
            return "Pod tolerates virtual nodes"
    return None


def malformed(request: Json) -> str | None:
    """What in an AdmissionRequest is not the JSON shape ``decide`` reads, or None.

    The API server sends validated objects, but the webhook's port answers anyone who can
    reach it: a string where an object belongs is a clear "unchanged", not a traceback.
    """
    if not isinstance(request.get("kind") or {}, dict):
        return "kind is not an object"
    pod = request.get("object")
    if not isinstance(pod, dict):
        return None  # decide answers "no Pod object"
    metadata = pod.get("metadata") or {}
    if not isinstance(metadata, dict):
        return "metadata is not an object"
    for key in ("labels", "annotations"):
        if not isinstance(metadata.get(key) or {}, dict):
            return f"metadata.{key} is not an object"
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return None
    if not isinstance(spec.get("nodeSelector") or {}, dict):
        return "spec.nodeSelector is not an object"
    for key in (*CONTAINER_LISTS, "imagePullSecrets", "tolerations"):
        items = spec.get(key) or []
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            return f"spec.{key} is not a list of objects"
    return None


def decide(request: Json, scope: Scope, config: WebhookConfig) -> Decision:
    """Decide for one AdmissionRequest, from the request alone.

    Nothing outside the request is consulted: the webhook's port answers anyone who can reach
    it, so the answer must not tell whether a Secret exists in some namespace. The derived
    pull secrets the patch names are created by the controller for Pods it sees in the API
    (``controller.SecretSync``), never for a review body.

    When in doubt the answer is "unchanged": a Pod must never become unpullable.
    """
    problem = malformed(request)
    if problem is not None:
        return unchanged(f"malformed AdmissionRequest: {problem}")
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
    elsewhere = runs_without_node_config(pod["spec"])
    if elsewhere is not None:
        return skipped(pod, config, f"{elsewhere}: no node-config there to fall back to the registry")
    rewrites = plan_rewrites(pod["spec"], config)
    if not rewrites:
        return skipped(pod, config, "no image from an accelerated registry")
    names = [str(ref.get("name", "")) for ref in pod["spec"].get("imagePullSecrets") or [] if ref]
    if not names and not config.rewrite_without_pull_secret:
        return skipped(pod, config, NO_PULL_SECRET)

    patch: list[Json] = [{"op": "replace", "path": r.pointer, "value": r.image} for r in rewrites]
    patch += _annotate(pod, {config.mode_key: ENABLED_VALUE, config.config_key: p2p_config(rewrites, config)})
    refs = [{"name": name} for name in derived_names(names, config)]
    if refs and "imagePullSecrets" not in pod["spec"]:
        patch.append({"op": "add", "path": "/spec/imagePullSecrets", "value": refs})
    else:
        patch.extend({"op": "add", "path": "/spec/imagePullSecrets/-", "value": r} for r in refs)
    if refs:
        patch += _label(pod, {USES_DERIVED_LABEL: "true"})
    return Decision(tuple(patch), f"rewrote {len(rewrites)} image(s)")


NO_PULL_SECRET = (
    "no pull secret to carry credentials to the alias host: the Pod's credentials come from the node "
    "(webhook.rewriteWithoutPullSecret rewrites such Pods)"
)


def _label(pod: Json, labels: dict[str, str]) -> list[Json]:
    if "labels" not in (pod.get("metadata") or {}):
        return [{"op": "add", "path": "/metadata/labels", "value": labels}]
    return [{"op": "add", "path": f"/metadata/labels/{escape_pointer(k)}", "value": v} for k, v in labels.items()]


def _decide_ephemeral(pod: Json, config: WebhookConfig) -> Decision:
    """``kubectl debug`` adds ephemeral containers to a running Pod.

    Pull secrets cannot change after creation, so only Pods injected at creation (which
    already carry the derived secrets) get their new ephemeral images rewritten, and only
    images of registries whose images were rewritten then (their credentials followed).
    """
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    if config.config_key not in annotations:
        return unchanged("ephemeral container in a Pod that was not injected")
    rewrites = plan_rewrites(pod["spec"], config, ("ephemeralContainers",))
    if not config.rewrite_without_pull_secret:
        done = _rewritten_registries(annotations[config.config_key], config)
        rewrites = [r for r in rewrites if r.registry in done]
    if not rewrites:
        return unchanged("no ephemeral image from an accelerated registry")
    patch = tuple({"op": "replace", "path": r.pointer, "value": r.image} for r in rewrites)
    return Decision(patch, f"rewrote {len(rewrites)} ephemeral image(s)")


def _rewritten_registries(annotation: object, config: WebhookConfig) -> set[str]:
    try:
        images = json.loads(str(annotation)).get("images") or []
    except (ValueError, AttributeError):
        return set()
    refs = (_accelerated(str(i.get("original", "")), config) for i in images if isinstance(i, dict))
    return {ref.registry for ref in refs if ref is not None}


WARNING_LIMIT = 256  # the API server may truncate longer warnings


def warning(reason: str) -> str:
    """One printable line (warnings travel as HTTP headers), within the API server's limit."""
    text = " ".join(f"shoal: image acceleration skipped: {reason}".split())
    return "".join(c if c.isprintable() else "?" for c in text)[:WARNING_LIMIT]


def review_response(review: Json, decision: Decision) -> Json:
    """The AdmissionReview v1 answer; always ``allowed`` (the webhook never blocks a Pod)."""
    request = review.get("request") or {}
    response: Json = {"uid": request.get("uid", ""), "allowed": True}
    if decision.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(list(decision.patch)).encode()).decode()
    if decision.skipped:
        response["warnings"] = [warning(decision.reason)]
    return {
        "apiVersion": review.get("apiVersion", "admission.k8s.io/v1"),
        "kind": "AdmissionReview",
        "response": response,
    }
