"""Kubernetes objects made by ``kubectl ... --dry-run=client -o json`` and stored as fixtures.

``kubectl`` builds these offline; what it cannot add without an API server (pull secrets,
init containers, template labels) is added by an RFC 7386 merge patch in the test itself.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

Json = dict[str, Any]
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "k8s"
BRIEF_REGISTRY = "test-registry-vpc.cn-hangzhou.cr.aliyuncs.com"
BRIEF_IMAGE = f"{BRIEF_REGISTRY}/docker-builder/nginx:latest"
DRY = ["--dry-run=client", "-o", "json"]
DIGEST = "sha256:" + "ab" * 32

# fixture name -> pipeline of kubectl argv; each step reads the previous step's stdout.
COMMANDS: dict[str, list[list[str]]] = {
    "deployment-test": [
        ["kubectl", "create", "deployment", "test", f"--image={BRIEF_IMAGE}", "--replicas=1", *DRY]
    ],
    "deployment-app": [
        ["kubectl", "create", "deployment", "app", "--image=registry.example.com/team/app:v1",
         "--image=quay.io/org/sidecar:2", *DRY]
    ],
    "deployment-web": [["kubectl", "create", "deployment", "web", "--image=nginx:1.27", *DRY]],
    "job-digest": [
        ["kubectl", "create", "job", "migrate", f"--image=registry.example.com/team/migrate@{DIGEST}",
         *DRY]
    ],
    "namespace-accelerated": [
        ["kubectl", "create", "namespace", "team-a", *DRY],
        ["kubectl", "label", "--local", "-f", "-", "k8s.aliyun.com/image-accelerate-mode=p2p",
         "-o", "json"],
    ],
    "secret-test-registry": [
        ["kubectl", "create", "secret", "docker-registry", "test-registry",
         f"--docker-server={BRIEF_REGISTRY}", "--docker-username=builder",
         "--docker-password=s3cret", *DRY]
    ],
    "secret-regcred": [
        ["kubectl", "create", "secret", "docker-registry", "regcred",
         "--docker-server=registry.example.com", "--docker-username=team",
         "--docker-password=pw", *DRY]
    ],
    "secret-dockerhub": [
        ["kubectl", "create", "secret", "docker-registry", "hub",
         "--docker-server=https://index.docker.io/v1/", "--docker-username=me",
         "--docker-password=tok", *DRY]
    ],
    "secret-quay": [
        ["kubectl", "create", "secret", "docker-registry", "quay",
         "--docker-server=quay.io", "--docker-username=q", "--docker-password=q", *DRY]
    ],
}


def run_kubectl(name: str) -> Json:
    """Regenerate one fixture with the real kubectl."""
    data = b""
    for argv in COMMANDS[name]:
        data = subprocess.run(argv, input=data, capture_output=True, check=True, timeout=30).stdout
    loaded: Json = json.loads(data)
    return loaded


def load(name: str) -> Json:
    loaded: Json = json.loads((FIXTURES / f"{name}.json").read_text())
    return loaded


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (what ``kubectl patch --type merge`` does)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def pod_from_template(deployment: Json, namespace: str) -> Json:
    """The Pod a ReplicaSet creates from a Deployment's template (what the webhook sees)."""
    template = deployment["spec"]["template"]
    name = deployment["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**copy.deepcopy(template["metadata"]), "generateName": f"{name}-",
                     "namespace": namespace},
        "spec": copy.deepcopy(template["spec"]),
    }


def with_namespace(obj: Json, namespace: str, uid: str | None = None) -> Json:
    out = copy.deepcopy(obj)
    out["metadata"]["namespace"] = namespace
    if uid:
        out["metadata"]["uid"] = uid
    return out


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
