"""containerd's CRI plugin, as kubelet drives it: ``config_path`` names node-config's certs.d,
``ImageService/PullImage`` carries a pull secret's credentials as kubelet sends them. Against
an htpasswd docker-registry, so the agent serves only when the credentials reached it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from shoal.agent.server import Agent
from shoal.cli.main import cli
from shoal.demo.imagegen import GeneratedImage
from shoal.testing.containerd import Containerd
from shoal.testing.registry import DistributionRegistry

AgentStarter = Callable[..., Awaitable[Agent]]
pytestmark = pytest.mark.real


@pytest.mark.parametrize("mode", ["mirror", "rewrite"])
async def test_cri_pull_through_agent_then_fallback(
    mode: str,
    private_registry: DistributionRegistry,
    small_image: GeneratedImage,
    start_agent: AgentStarter,
    tmp_path: Path,
) -> None:
    # mirror: the image as written; rewrite: the alias host of a registry named with a port
    name = private_registry.host if mode == "mirror" else "harbor.local:5000"
    ref = private_registry.push(small_image, "team/app", "v1")
    image = ref if mode == "mirror" else "harbor.local:65001/team/app:v1"
    user, password = next(iter(private_registry.users.items()))
    agent = await start_agent({name: private_registry.url}, alias_port=65001)
    certs = tmp_path / "certs.d"
    argv = [
        *("node-config", "--mode", mode, "--registry", f"{name}={private_registry.url}"),
        *("--agent", agent.url.removeprefix("http://"), "--alias-port", "65001"),
        *("--containerd-certs-dir", str(certs), "--registries-conf-dir", ""),
    ]
    assert CliRunner().invoke(cli, argv).exit_code == 0

    async def pull(node: Containerd) -> None:
        await asyncio.to_thread(node.cri_pull, image, username=user, password=password)
        assert await asyncio.to_thread(node.unpacked, image)

    def fetched_by(mark: int) -> set[str]:
        return {r.client for r in private_registry.requests(mark) if r.is_blob_get}

    mark = await asyncio.to_thread(private_registry.mark)
    with (
        Containerd(tmp_path / "node1", cri_config_path=certs) as node1,
        Containerd(tmp_path / "node2", cri_config_path=certs) as node2,
    ):
        with pytest.raises(grpc.RpcError):  # private: without the pull secret, no image
            await asyncio.to_thread(node1.cri_pull, image)
        await pull(node1)
        await pull(node2)
        assert await asyncio.to_thread(private_registry.since, mark) == small_image.blob_bytes
        assert await asyncio.to_thread(fetched_by, mark) == {"agent"}  # the credentials reached it

        await agent.stop()
        await asyncio.to_thread(node1.forget)
        mark = await asyncio.to_thread(private_registry.mark)
        await pull(node1)
        assert await asyncio.to_thread(private_registry.since, mark) == small_image.blob_bytes
        assert await asyncio.to_thread(fetched_by, mark) == {"containerd"}
