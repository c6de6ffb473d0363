"""Mirror mode with real programs: ``shoal node-config`` writes certs.d, a real containerd 1.6
(``ctr --hosts-dir``) pulls the image by its original name through the agent, and from the
registry when the agent is down. Origin egress is counted from docker-registry's JSON log."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from shoal.agent.server import Agent
from shoal.cli.main import cli
from shoal.demo.imagegen import GeneratedImage
from shoal.testing.containerd import Containerd
from shoal.testing.registry import DistributionRegistry, LoggedRequest

AgentStarter = Callable[..., Awaitable[Agent]]
pytestmark = pytest.mark.real


def node_config(certs_dir: Path, *args: str) -> str:
    """Run ``shoal node-config`` for containerd only, checked against a node's config.toml
    whose CRI plugin reads ``certs_dir`` (``ctr --hosts-dir`` stands in for the CRI plugin)."""
    config = certs_dir.parent / "config.toml"
    config.write_text(f'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\nconfig_path = "{certs_dir}"\n')
    argv = ["node-config", "--containerd-certs-dir", str(certs_dir), "--registries-conf-dir", ""]
    argv += ["--containerd-config", str(config), "--require-config-path", *args]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 0, result.output
    assert "containerd reads" in result.output
    return result.output


def agents_of(requests: list[LoggedRequest]) -> set[str]:
    """Who fetched blobs from the origin: the agent or containerd itself."""
    return {r.client for r in requests if r.is_blob_get}


async def pull(node: Containerd, ref: str, certs_dir: Path, user: str | None = None) -> None:
    await asyncio.to_thread(node.pull, ref, hosts_dir=certs_dir, user=user)
    assert await asyncio.to_thread(node.unpacked, ref)


class TestMirrorMode:
    """The original image name, two node-cold pulls, one origin read; agent down still pulls."""

    async def test_original_name_through_agent_then_fallback(
        self,
        registry: DistributionRegistry,
        small_image: GeneratedImage,
        start_agent: AgentStarter,
        tmp_path: Path,
    ) -> None:
        ref = registry.push(small_image, "team/app", "v1")
        agent = await start_agent({registry.host: registry.url})
        certs = tmp_path / "certs.d"
        node_config(certs, "--registry", f"{registry.host}={registry.url}", "--agent", agent.url[7:])
        mark = await asyncio.to_thread(registry.mark)
        with Containerd(tmp_path / "node1") as node1, Containerd(tmp_path / "node2") as node2:
            await pull(node1, ref, certs)
            await pull(node2, ref, certs)
            through_agent = await asyncio.to_thread(registry.requests, mark)
            assert await asyncio.to_thread(registry.since, mark) == small_image.blob_bytes
            assert agents_of(through_agent) == {"agent"}  # containerd never went to the registry

            await agent.stop()
            await asyncio.to_thread(node1.forget)
            mark = await asyncio.to_thread(registry.mark)
            await pull(node1, ref, certs)
            direct = await asyncio.to_thread(registry.requests, mark)
            assert await asyncio.to_thread(registry.since, mark) == small_image.blob_bytes
            assert agents_of(direct) == {"containerd"}
