"""What the API server and kubelet do around the webhook, for tests without a cluster.

``admission_review`` builds the AdmissionReview v1 the API server posts for a Pod;
``apply_json_patch`` applies the webhook's answer as the API server would (the ``add`` and
``replace`` operations it emits); ``kubelet_credentials`` picks a pull secret's credentials
for an image the way kubelet's keyring matches ``.dockerconfigjson`` keys.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

from shoal.core.reference import ImageReference

__all__ = ["admission_review", "apply_json_patch", "kubelet_credentials"]

Json = dict[str, Any]


def admission_review(
    pod: Json,
    namespace: str,
    *,
    dry_run: bool = False,
    operation: str = "CREATE",
    sub_resource: str | None = None,
    uid: str = "705ab4f5-6393-11e8-b7cc-42010a800002",
) -> Json:
    """An AdmissionReview v1 request as the API server sends it for a Pod."""
    request: Json = {
        "uid": uid,
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": namespace,
        "operation": operation,
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
        "object": pod,
        "oldObject": None,
        "dryRun": dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
    }
    if sub_resource:
        request["subResource"] = sub_resource
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def _parse_pointer(path: str) -> list[str]:
    return [t.replace("~1", "/").replace("~0", "~") for t in path.split("/")[1:]]


def apply_json_patch(document: Json, patch: list[Json]) -> Json:
    """RFC 6902 ``add`` and ``replace``: the operations the webhook emits."""
    doc = copy.deepcopy(document)
    for op in patch:
        tokens = _parse_pointer(op["path"])
        parent: Any = doc
        for token in tokens[:-1]:
            parent = parent[int(token)] if isinstance(parent, list) else parent[token]
        last = tokens[-1]
        if op["op"] == "add":
            if isinstance(parent, list):
                parent.append(op["value"]) if last == "-" else parent.insert(int(last), op["value"])
            else:
                parent[last] = op["value"]
        elif op["op"] == "replace":
            if isinstance(parent, list):
                parent[int(last)] = op["value"]
            else:
                if last not in parent:
                    raise KeyError(f"replace of missing {op['path']}")
                parent[last] = op["value"]
        else:
            raise ValueError(f"unexpected op {op['op']}")
    return doc


def kubelet_credentials(dockerconfigjson: str, image: str) -> tuple[str, str] | None:
    """``(user, password)`` for ``image`` from a base64 ``.dockerconfigjson``, or None.

    kubelet matches a key against the image's host (exactly, ports included) and, when the
    key has a path, against the repository path as a prefix; the longest match wins.
    """
    auths = json.loads(base64.b64decode(dockerconfigjson)).get("auths") or {}
    ref = ImageReference.parse(image)
    host, path = ref.registry, ref.repository
    best: tuple[int, Json] | None = None
    for key, entry in auths.items():
        key_host, _, key_path = key.removeprefix("https://").removeprefix("http://").partition("/")
        key_path = key_path.strip("/")
        if key_host != host or (key_path and not (path == key_path or path.startswith(key_path + "/"))):
            continue
        if best is None or len(key_path) > best[0]:
            best = (len(key_path), entry)
    if best is None:
        return None
    entry = best[1]
    if entry.get("username"):
        return str(entry["username"]), str(entry.get("password", ""))
    user, _, password = base64.b64decode(entry.get("auth", "")).decode().partition(":")
    return user, password
