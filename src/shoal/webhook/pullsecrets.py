"""Derive a P2P pull secret from an original one: same credentials, registry key changed.

The brief: P2P credentials "differ from standard credentials only in the image registry
domain name". kubelet picks the credentials for ``harbor.local:65001/team/app`` from a
``.dockerconfigjson`` entry whose key matches that host (and path prefix), so the derived
secret holds ``<alias host>[/<path>]`` keys with the original ``auth``/``username``/``password``.
Nothing here performs I/O: the controller and the server apply what these functions return.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from shoal.core.reference import canonical_registry
from shoal.webhook.config import WebhookConfig

DOCKERCONFIGJSON = "kubernetes.io/dockerconfigjson"
DOCKERCONFIGJSON_KEY = ".dockerconfigjson"
DERIVED_LABEL = "shoal.io/derived-pull-secret"
DERIVED_FROM_ANNOTATION = "shoal.io/derived-from"
USES_DERIVED_LABEL = "shoal.io/uses-derived-pull-secret"
"""on Pods the webhook gave derived pull secrets: the controller watches Pods by this label."""
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "shoal-webhook"

Json = dict[str, Any]


def split_auth_key(key: str) -> tuple[str, str]:
    """``https://index.docker.io/v1/`` -> (``docker.io``, ``""``); ``reg/team`` -> (reg, team).

    Docker config keys may carry a scheme and, for Docker Hub, the legacy ``/v1/`` path.
    """
    rest = key.strip()
    for scheme in ("https://", "http://"):
        rest = rest.removeprefix(scheme)
    host, _, path = rest.partition("/")
    host = canonical_registry(host.lower())
    path = path.strip("/")
    if path in ("v1", "v2"):
        path = ""
    return host, path


def read_dockerconfig(secret: Json) -> Json | None:
    """The decoded ``.dockerconfigjson`` of a Secret, or None when absent or unreadable."""
    if secret.get("type") != DOCKERCONFIGJSON:
        return None
    raw = (secret.get("data") or {}).get(DOCKERCONFIGJSON_KEY)
    if not isinstance(raw, str):
        return None
    try:
        decoded = json.loads(base64.b64decode(raw, validate=True))
    except (binascii.Error, ValueError):
        return None
    return decoded if isinstance(decoded, dict) else None


def derive_dockerconfig(dockerconfig: Json, config: WebhookConfig) -> Json | None:
    """Only the entries for accelerated registries, re-keyed under their alias hosts.

    Returns None when the original holds no credentials for an accelerated registry.
    """
    auths = dockerconfig.get("auths")
    if not isinstance(auths, dict):
        return None
    derived: Json = {}
    for key in sorted(auths):
        entry = auths[key]
        host, path = split_auth_key(key)
        if host not in config.registries or not isinstance(entry, dict):
            continue
        new_key = config.alias(host) + (f"/{path}" if path else "")
        derived.setdefault(new_key, entry)
    return {"auths": derived} if derived else None


def derive_secret(original: Json, config: WebhookConfig) -> Json | None:
    """The Secret manifest the webhook ensures next to ``original``, or None if not needed.

    It is owned by the original (same namespace), so Kubernetes' garbage collector deletes
    it with the original even when the controller is down.
    """
    dockerconfig = read_dockerconfig(original)
    if dockerconfig is None:
        return None
    derived = derive_dockerconfig(dockerconfig, config)
    if derived is None:
        return None
    meta = original.get("metadata") or {}
    name = str(meta.get("name", ""))
    encoded = base64.b64encode(json.dumps(derived, sort_keys=True).encode()).decode()
    owner: list[Json] = []
    if meta.get("uid"):
        owner = [
            {"apiVersion": "v1", "kind": "Secret", "name": name, "uid": meta["uid"]},
        ]
    metadata: Json = {
        "name": config.derived_secret_name(name),
        "namespace": meta.get("namespace"),
        "labels": {DERIVED_LABEL: "true", MANAGED_BY_LABEL: MANAGED_BY},
        "annotations": {DERIVED_FROM_ANNOTATION: name},
    }
    if owner:
        metadata["ownerReferences"] = owner
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": DOCKERCONFIGJSON,
        "metadata": metadata,
        "data": {DOCKERCONFIGJSON_KEY: encoded},
    }


def derived_names(names: list[str], config: WebhookConfig) -> list[str]:
    """The derived pull secrets to add beside a Pod's ``names``, in order, none twice."""
    present = set(names)
    derivatives = {config.derived_secret_name(name) for name in names}
    out: list[str] = []
    for name in names:
        derived = config.derived_secret_name(name)
        if name in derivatives:
            continue  # itself the derived copy of another of the Pod's secrets
        if derived not in present and derived not in out:
            out.append(derived)
    return out


def wanted_derived(pod: Json, config: WebhookConfig) -> list[tuple[str, str]]:
    """``(original, derived)`` pull secret names a Pod in the API references side by side."""
    spec = pod.get("spec") if isinstance(pod.get("spec"), dict) else {}
    refs = (spec or {}).get("imagePullSecrets") or []
    names = {str(ref.get("name", "")) for ref in refs if isinstance(ref, dict)}
    pairs = ((name, config.derived_secret_name(name)) for name in names)
    return sorted((original, derived) for original, derived in pairs if derived in names)


def needs_update(existing: Json, desired: Json) -> bool:
    """True when a derived Secret no longer matches what its original implies."""
    return bool(
        existing.get("data") != desired.get("data")
        or existing.get("type") != desired.get("type")
        or ((existing.get("metadata") or {}).get("annotations") or {}).get(DERIVED_FROM_ANNOTATION)
        != desired["metadata"]["annotations"][DERIVED_FROM_ANNOTATION]
    )
