"""``shoal webhook`` as the chart runs it: a real process over HTTPS, its controller on the fake
API server. It rewrites to the alias host, creates the derived pull secret once the Pod is in
the API (and never for a review posted straight to it), and serves a renewed certificate (a
kubelet-style ``..data`` swap) without a restart."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.testing.admission import admission_review, apply_json_patch
from shoal.testing.fake_apiserver import FakeApiServer
from shoal.testing.procs import ManagedProcess, free_port, wait_until

pytestmark = pytest.mark.real
MODE = "k8s.aliyun.com/image-accelerate-mode"


def pair(directory: Path, name: str) -> None:
    directory.mkdir(parents=True)
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}"),
            *("-keyout", str(directory / "tls.key"), "-out", str(directory / "tls.crt")),
        ],
        check=True,
        capture_output=True,
    )


def swap(mount: Path, version: str) -> None:
    """What kubelet does to a Secret volume on an update: one atomic ``..data`` rename."""
    (mount / "..data_tmp").symlink_to(mount.parent / version)
    os.replace(mount / "..data_tmp", mount / "..data")


def served(port: int) -> str:
    """SHA-256 of the certificate the webhook presents to a new connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, _context().wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def fingerprint(cert: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).hexdigest()


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    auth = {"username": "alice", "password": "s3cret"}
    config = base64.b64encode(json.dumps({"auths": {"harbor.local:5000": auth}}).encode()).decode()
    server.put(
        {
            "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": "regcred", "namespace": "team-a"},
            "data": {".dockerconfigjson": config},
        }
    )
    yield server
    server.close()


def test_webhook_process(apiserver: FakeApiServer, tmp_path: Path) -> None:
    pair(tmp_path / "v1", "old")
    pair(tmp_path / "v2", "new")
    mount = tmp_path / "mount"
    mount.mkdir()
    swap(mount, "v1")
    for name in ("tls.crt", "tls.key"):
        (mount / name).symlink_to(Path("..data") / name)
    kubeconfig = apiserver.write_kubeconfig(tmp_path / "kubeconfig")
    port = free_port()
    argv = [sys.executable, "-m", "shoal", "webhook", "--listen", f"127.0.0.1:{port}"]
    argv += ["--tls-cert", str(mount / "tls.crt"), "--tls-key", str(mount / "tls.key")]
    argv += ["--registry", "harbor.local:5000", "--kubeconfig", str(kubeconfig), "--cert-reload-interval", "0.2"]
    process = ManagedProcess(argv, stdout=tmp_path / "webhook.log")
    try:
        wait_until(lambda: _answers(port), what="shoal webhook", process=process, timeout=30)
        pod: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"generateName": "app-", "namespace": "team-a", "labels": {MODE: "p2p"}},
            "spec": {
                "imagePullSecrets": [{"name": "regcred"}],
                "containers": [{"name": "a", "image": "harbor.local:5000/team/app:v1"}],
            },
        }
        review = admission_review(pod, "team-a")
        answer = _post(port, review)["response"]
        patched = apply_json_patch(pod, json.loads(base64.b64decode(answer["patch"])))
        assert patched["spec"]["containers"][0]["image"] == "harbor.local:65001/team/app:v1"
        assert apiserver.get("team-a", "acr-credential-regcred-p2p") is None  # not for a review
        apiserver.put_pod(patched)  # the API server stores the admitted Pod
        assert apiserver.wait_for(lambda s: s.get("team-a", "acr-credential-regcred-p2p") is not None, timeout=30)
        derived = apiserver.get("team-a", "acr-credential-regcred-p2p")
        assert derived is not None
        assert list(json.loads(base64.b64decode(derived["data"][".dockerconfigjson"]))["auths"]) == [
            "harbor.local:65001"
        ]

        assert served(port) == fingerprint(tmp_path / "v1/tls.crt")
        swap(mount, "v2")
        wait_until(
            lambda: served(port) == fingerprint(tmp_path / "v2/tls.crt"), what="renewed certificate", process=process
        )
        assert process.alive()
    finally:
        process.stop()


def test_forged_reviews_write_nothing_and_tell_nothing(apiserver: FakeApiServer, tmp_path: Path) -> None:
    """Review finding (issue 16, defect 5): a review posted straight to /mutate naming team-b
    created a derived Secret there, and whether a patch came back told whether a pull secret
    of that name existed in team-b."""
    existing = apiserver.get("team-a", "regcred")
    assert existing is not None
    existing["metadata"] = {"name": "regcred", "namespace": "team-b"}
    apiserver.put(existing)
    pair(tmp_path / "tls", "forged")
    port = free_port()
    argv = [sys.executable, "-m", "shoal", "webhook", "--listen", f"127.0.0.1:{port}"]
    argv += ["--tls-cert", str(tmp_path / "tls/tls.crt"), "--tls-key", str(tmp_path / "tls/tls.key")]
    argv += ["--registry", "harbor.local:5000", "--kubeconfig", str(apiserver.write_kubeconfig(tmp_path / "kc"))]
    process = ManagedProcess(argv, stdout=tmp_path / "webhook.log")
    try:
        wait_until(lambda: _answers(port), what="shoal webhook", process=process, timeout=30)
        assert apiserver.wait_for(lambda s: any("watch=true" in p for _, p in s.requests), timeout=30)

        def forged(secret: str) -> dict[str, Any]:
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "probe", "namespace": "team-b", "labels": {MODE: "p2p"}},
                "spec": {
                    "imagePullSecrets": [{"name": secret}],
                    "containers": [{"name": "a", "image": "harbor.local:5000/team/app:v1"}],
                },
            }
            response: dict[str, Any] = _post(port, admission_review(pod, "team-b", uid="u"))["response"]
            return json.loads(base64.b64decode(response["patch"])) if "patch" in response else {}

        exists, missing = forged("regcred"), forged("no-such-secret")
        assert json.dumps(exists).replace("regcred", "X") == json.dumps(missing).replace("no-such-secret", "X")
        apiserver.wait_for(lambda _: False, timeout=1.0)
        assert [r for r in apiserver.requests if r[0] != "GET"] == []
        assert apiserver.get("team-b", "acr-credential-regcred-p2p") is None
        assert process.alive()
    finally:
        process.stop()


def _context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=_context(), timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _post(port: int, review: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"https://127.0.0.1:{port}/mutate",
        data=json.dumps(review).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, context=_context(), timeout=5) as response:
        body: dict[str, Any] = json.loads(response.read())
    return body
