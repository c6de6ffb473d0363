"""The CRI-O path with real programs: skopeo (containers-image, as CRI-O uses it) reads the
``registries.conf.d`` drop-in ``shoal node-config`` writes, pulls through the agent, and from
the registry when the agent is down. Anonymous registry: skopeo 1.9 does not send
``--src-creds`` after a location rewrite (LAB.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from shoal.agent.server import Agent
from shoal.cli.main import cli
from shoal.demo.imagegen import GeneratedImage
from shoal.testing.registry import DistributionRegistry, LoggedRequest
from shoal.testing.skopeo import layout_digests, skopeo_pull

AgentStarter = Callable[..., Awaitable[Agent]]
pytestmark = pytest.mark.real


def drop_in(workdir: Path, *args: str) -> Path:
    """``shoal node-config`` for containers-image only; the drop-in it wrote."""
    conf_d = workdir / "registries.conf.d"
    argv = ["node-config", "--containerd-certs-dir", "", "--registries-conf-dir", str(conf_d), *args]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 0, result.output
    return conf_d / "shoal.conf"


def fetchers(requests: list[LoggedRequest]) -> set[str]:
    return {r.client for r in requests if r.is_blob_get}


@pytest.mark.parametrize("mode", ["mirror", "rewrite"])
async def test_skopeo_through_drop_in_then_fallback(
    mode: str,
    registry: DistributionRegistry,
    small_image: GeneratedImage,
    start_agent: AgentStarter,
    tmp_path: Path,
) -> None:
    # mirror: the image keeps the registry's name; rewrite: the webhook's alias host of a
    # registry named with a port (harbor.local:5000), whose origin is the test registry
    name = registry.host if mode == "mirror" else "harbor.local:5000"
    ref = registry.push(small_image, "team/app", "v1")
    pulled = ref if mode == "mirror" else "harbor.local:65001/team/app:v1"
    agent = await start_agent({name: registry.url}, alias_port=65001)
    conf = drop_in(
        tmp_path,
        "--registry",
        f"{name}={registry.url}",
        "--agent",
        agent.url[7:],
        "--mode",
        mode,
        "--alias-port",
        "65001",
    )

    async def pull(dest: Path) -> None:
        result = await asyncio.to_thread(skopeo_pull, pulled, dest, registries_conf=conf)
        assert result.returncode == 0, result.stderr
        assert {b.digest for b in small_image.blobs} <= layout_digests(dest)

    mark = await asyncio.to_thread(registry.mark)
    await pull(tmp_path / "node1")
    await pull(tmp_path / "node2")
    assert await asyncio.to_thread(registry.since, mark) == small_image.blob_bytes
    assert fetchers(await asyncio.to_thread(registry.requests, mark)) == {"agent"}

    await agent.stop()
    mark = await asyncio.to_thread(registry.mark)
    await pull(tmp_path / "node3")
    assert await asyncio.to_thread(registry.since, mark) == small_image.blob_bytes
    assert fetchers(await asyncio.to_thread(registry.requests, mark)) == {"skopeo"}
