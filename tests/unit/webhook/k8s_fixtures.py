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

from shoal.testing.admission import admission_review as admission_review  # re-exported
from shoal.testing.admission import apply_json_patch as apply_json_patch  # re-exported

Json = dict[str, Any]
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "k8s"
BRIEF_REGISTRY = "test-registry-vpc.cn-hangzhou.cr.aliyuncs.com"
BRIEF_IMAGE = f"{BRIEF_REGISTRY}/docker-builder/nginx:latest"
DRY = ["--dry-run=client", "-o", "json"]
DIGEST = "sha256:" + "ab" * 32

# fixture name -> pipeline of kubectl argv; each step reads the previous step's stdout.
COMMANDS: dict[str, list[list[str]]] = {
    "deployment-test": [["kubectl", "create", "deployment", "test", f"--image={BRIEF_IMAGE}", "--replicas=1", *DRY]],
    "deployment-app": [
        [
            "kubectl",
            "create",
            "deployment",
            "app",
            "--image=registry.example.com/team/app:v1",
            "--image=quay.io/org/sidecar:2",
            *DRY,
        ]
    ],
    "deployment-web": [["kubectl", "create", "deployment", "web", "--image=nginx:1.27", *DRY]],
    "job-digest": [
        ["kubectl", "create", "job", "migrate", f"--image=registry.example.com/team/migrate@{DIGEST}", *DRY]
    ],
    "namespace-accelerated": [
        ["kubectl", "create", "namespace", "team-a", *DRY],
        ["kubectl", "label", "--local", "-f", "-", "k8s.aliyun.com/image-accelerate-mode=p2p", "-o", "json"],
    ],
    "secret-test-registry": [
        [
            "kubectl",
            "create",
            "secret",
            "docker-registry",
            "test-registry",
            f"--docker-server={BRIEF_REGISTRY}",
            "--docker-username=builder",
            "--docker-password=s3cret",
            *DRY,
        ]
    ],
    "secret-regcred": [
        [
            "kubectl",
            "create",
            "secret",
            "docker-registry",
            "regcred",
            "--docker-server=registry.example.com",
            "--docker-username=team",
            "--docker-password=pw",
            *DRY,
        ]
    ],
    "secret-dockerhub": [
        [
            "kubectl",
            "create",
            "secret",
            "docker-registry",
            "hub",
            "--docker-server=https://index.docker.io/v1/",
            "--docker-username=me",
            "--docker-password=tok",
            *DRY,
        ]
    ],
    "secret-quay": [
        [
            "kubectl",
            "create",
            "secret",
            "docker-registry",
            "quay",
            "--docker-server=quay.io",
            "--docker-username=q",
            "--docker-password=q",
            *DRY,
        ]
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
        "metadata": {**copy.deepcopy(template["metadata"]), "generateName": f"{name}-", "namespace": namespace},
        "spec": copy.deepcopy(template["spec"]),
    }


def with_namespace(obj: Json, namespace: str, uid: str | None = None) -> Json:
    out = copy.deepcopy(obj)
    out["metadata"]["namespace"] = namespace
    if uid:
        out["metadata"]["uid"] = uid
    return out
