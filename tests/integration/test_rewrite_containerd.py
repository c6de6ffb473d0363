"""Rewrite mode end to end with real programs, for a registry named with a port.

The image and the pull credentials come from the webhook's own answer: an AdmissionReview
for a labelled Pod is posted to the webhook app, its JSONPatch applied, the derived pull
secret its controller makes for the name the patch adds read the way kubelet reads it.
``shoal node-config --mode rewrite``
writes certs.d for the alias host; a real containerd 1.6 pulls the rewritten image with
those credentials from an htpasswd docker-registry: through the agent when it is up (origin
bytes once for two cold nodes), from the registry when it is down.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner

from shoal.agent.server import Agent
from shoal.cli.main import cli
from shoal.demo.imagegen import GeneratedImage
from shoal.testing.admission import admission_review, apply_json_patch, kubelet_credentials
from shoal.testing.containerd import Containerd
from shoal.testing.registry import DistributionRegistry
from shoal.webhook.config import WebhookConfig
from shoal.webhook.pullsecrets import derive_secret
from shoal.webhook.server import create_app

AgentStarter = Callable[..., Awaitable[Agent]]
Json = dict[str, Any]
pytestmark = pytest.mark.real

NAME = "harbor.local:5000"  # the registry as Pods name it; its origin is the test registry
MODE = "k8s.aliyun.com/image-accelerate-mode"


def pull_secret(user: str, password: str) -> Json:
    """``kubectl create secret docker-registry regcred --docker-server=harbor.local:5000 ...``"""
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    config = {"auths": {NAME: {"username": user, "password": password, "auth": auth}}}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/dockerconfigjson",
        "metadata": {"name": "regcred", "namespace": "team-a", "uid": "uid-regcred"},
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
    }


async def admitted_pod(config: WebhookConfig) -> Json:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "app-", "namespace": "team-a", "labels": {MODE: "p2p"}},
        "spec": {
            "imagePullSecrets": [{"name": "regcred"}],
            "containers": [{"name": "app", "image": f"{NAME}/team/app:v1"}],
        },
    }
    review = admission_review(pod, "team-a")
    async with TestClient(TestServer(create_app(config))) as http:
        response = await http.post("/mutate", json=review)
        answer = await response.json()
    patch = json.loads(base64.b64decode(answer["response"]["patch"]))
    patched: Json = apply_json_patch(pod, patch)
    return patched


async def test_rewritten_pod_pulls_with_agent_up_and_down(
    private_registry: DistributionRegistry,
    small_image: GeneratedImage,
    start_agent: AgentStarter,
    tmp_path: Path,
) -> None:
    private_registry.push(small_image, "team/app", "v1")
    user, password = next(iter(private_registry.users.items()))
    config = WebhookConfig.build([NAME])
    pod = await admitted_pod(config)

    image = pod["spec"]["containers"][0]["image"]
    assert image == "harbor.local:65001/team/app:v1"
    derived = derive_secret(pull_secret(user, password), config)
    assert derived is not None
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}, {"name": derived["metadata"]["name"]}]
    creds = kubelet_credentials(derived["data"][".dockerconfigjson"], image)
    assert creds == (user, password)
    assert kubelet_credentials(pull_secret(user, password)["data"][".dockerconfigjson"], image) is None

    agent = await start_agent({NAME: private_registry.url}, alias_port=65001)
    certs = tmp_path / "certs.d"
    argv = [
        *("node-config", "--mode", "rewrite", "--registry", f"{NAME}={private_registry.url}"),
        *("--agent", agent.url.removeprefix("http://"), "--alias-port", "65001"),
        *("--containerd-certs-dir", str(certs), "--registries-conf-dir", ""),
    ]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 0, result.output
    assert (certs / "harbor.local:65001/hosts.toml").is_file()

    async def pull(node: Containerd, *, user_pass: str | None) -> None:
        await asyncio.to_thread(node.pull, image, hosts_dir=certs, user=user_pass)
        assert await asyncio.to_thread(node.unpacked, image)

    login = f"{creds[0]}:{creds[1]}"
    mark = await asyncio.to_thread(private_registry.mark)
    with Containerd(tmp_path / "node1") as node1, Containerd(tmp_path / "node2") as node2:
        failed = await asyncio.to_thread(node1.pull, image, hosts_dir=certs, check=False)
        assert failed.returncode != 0  # the registry is private: no credentials, no image
        await pull(node1, user_pass=login)
        await pull(node2, user_pass=login)
        assert await asyncio.to_thread(private_registry.since, mark) == small_image.blob_bytes
        fetched_by = {r.client for r in await asyncio.to_thread(private_registry.requests, mark) if r.is_blob_get}
        assert fetched_by == {"agent"}

        await agent.stop()  # agent down (rolling upgrade, uninstall, a node without one)
        await asyncio.to_thread(node1.forget)
        mark = await asyncio.to_thread(private_registry.mark)
        await pull(node1, user_pass=login)
        assert await asyncio.to_thread(private_registry.since, mark) == small_image.blob_bytes
        fetched_by = {r.client for r in await asyncio.to_thread(private_registry.requests, mark) if r.is_blob_get}
        assert fetched_by == {"containerd"}
