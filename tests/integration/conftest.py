"""Shared fixtures for integration tests: real registries, real clients, generated images.

Images are generated once per session (read-only afterwards); registries and containerd
daemons are per test, so byte counters start from zero.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest

from shoal.demo.imagegen import GeneratedImage, generate_image
from shoal.testing.containerd import Containerd
from shoal.testing.registry import DistributionRegistry

if TYPE_CHECKING:
    from shoal.agent.server import Agent

MiB = 1 << 20
PRIVATE_USERS = {"alice": "s3cret"}


# -- images ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def small_image(tmp_path_factory: pytest.TempPathFactory) -> GeneratedImage:
    """One platform (linux/amd64), 3 layers, 6 MiB of layer data."""
    return generate_image(tmp_path_factory.mktemp("images") / "small", size=6 * MiB, layers=3, seed=1)


@pytest.fixture(scope="session")
def big_layer_image(tmp_path_factory: pytest.TempPathFactory) -> GeneratedImage:
    """One 24 MiB layer: long enough to kill the registry (or fill the disk) in the middle."""
    return generate_image(tmp_path_factory.mktemp("images") / "big", size=24 * MiB, layers=1, seed=11)


@pytest.fixture(scope="session")
def multiarch_image(tmp_path_factory: pytest.TempPathFactory) -> GeneratedImage:
    """An OCI index over linux/amd64 and linux/arm64, 2 layers and 4 MiB per platform."""
    return generate_image(
        tmp_path_factory.mktemp("images") / "multiarch",
        size=4 * MiB,
        layers=2,
        seed=2,
        platforms=("linux/amd64", "linux/arm64"),
    )


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``tmpfs("4m")``: a fresh tmpfs of that size, unmounted at teardown."""
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"tmpfs-{len(mounts)}"
        where.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], check=False)


# -- real programs -----------------------------------------------------------------------


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[DistributionRegistry]:
    """A fresh, anonymous docker-registry (CNCF distribution 2.8) on 127.0.0.1."""
    with DistributionRegistry(tmp_path / "registry") as reg:
        yield reg


@pytest.fixture
def private_registry(tmp_path: Path) -> Iterator[DistributionRegistry]:
    """A docker-registry that requires basic auth as alice:s3cret (``reg.creds``)."""
    with DistributionRegistry(tmp_path / "private-registry", users=PRIVATE_USERS) as reg:
        yield reg


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[Containerd]:
    """A private containerd daemon; pull with ``containerd.pull_direct`` / ``pull_via_mirror``."""
    with Containerd(tmp_path / "containerd") as daemon:
        yield daemon


# -- the node agent (issue 2) ------------------------------------------------------------

AgentStarter = Callable[..., Awaitable["Agent"]]


@pytest.fixture
async def start_agent(tmp_path: Path) -> AsyncIterator[AgentStarter]:
    """``await start_agent({"registry.test": url}, cache_dir=..., **config)``: an in-process
    plain-mirror Agent on a free port (download_pattern ``source``), stopped at teardown."""
    from shoal.agent.config import load_config
    from shoal.agent.server import Agent

    agents: list[Agent] = []

    async def start(registries: dict[str, str], *, cache_dir: Path | None = None, **values: object) -> Agent:
        config = load_config(
            {
                "registries": registries,
                "cache_dir": str(cache_dir or tmp_path / "agent-cache"),
                "listen": "127.0.0.1:0",
                "download_pattern": "source",
                **values,
            }
        )
        agent = Agent(config)
        await agent.start()
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        await agent.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client that leaves bodies as they came (no decompression)."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session
