"""``shoal node-ready`` with a real agent: the startup taint stays while the agent does not
answer and comes off once it does (the API server is the local fake, with the real client)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from shoal.agent.server import Agent
from shoal.cli.main import cli
from shoal.nodeconfig.ready import wait_for_agent
from shoal.testing.fake_apiserver import FakeApiServer
from shoal.testing.procs import free_port

AgentStarter = Callable[..., Awaitable[Agent]]
pytestmark = pytest.mark.real
KEY = "shoal.io/agent-not-ready"


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    server.put_node(
        {
            "metadata": {"name": "node-1"},
            "spec": {"taints": [{"key": KEY, "effect": "NoSchedule"}, {"key": "gpu", "effect": "NoSchedule"}]},
        }
    )
    yield server
    server.close()


async def test_taint_removed_once_agent_answers(
    apiserver: FakeApiServer, start_agent: AgentStarter, tmp_path: Path
) -> None:
    port = free_port()
    # nothing answers on the agent's port yet: node-ready keeps waiting
    assert not await asyncio.to_thread(
        wait_for_agent, f"127.0.0.1:{port}", interval=0.05, deadline=time.monotonic() + 0.3
    )
    assert not [m for m, p in apiserver.requests if p.startswith("/api/v1/nodes")]

    await start_agent({"registry.test": "http://127.0.0.1:9"}, listen=f"127.0.0.1:{port}")
    argv = ["node-ready", "--node", "node-1", "--taint", KEY, "--agent", f"127.0.0.1:{port}"]
    argv += ["--kubeconfig", str(apiserver.write_kubeconfig(tmp_path / "kubeconfig")), "--exit", "--interval", "0.1"]
    result = await asyncio.to_thread(CliRunner().invoke, cli, argv)
    assert result.exit_code == 0, result.output
    assert "removed taint" in result.output
    stored = apiserver.get_node("node-1")
    assert stored is not None
    assert stored["spec"]["taints"] == [{"key": "gpu", "effect": "NoSchedule"}]
