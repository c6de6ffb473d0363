"""Helpers shared by the agent's integration tests: looking into an in-process Agent."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import aiohttp

from shoal.agent.server import Agent
from shoal.demo.imagegen import GeneratedImage
from shoal.testing.skopeo import skopeo_pull

REG = "registry.test"
"""the registry name the tests' agents mirror"""


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": aiohttp.encode_basic_auth(user, password)}


def cache_files(agent: Agent, sub: str) -> list[Path]:
    root = agent.config.cache_dir / sub
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def metric(agent: Agent, name: str, **labels: str) -> float:
    return agent.metrics.registry.get_sample_value(name, labels) or 0.0


async def settled(agent: Agent, timeout: float = 30.0) -> None:
    """Wait until no download is in flight."""
    deadline = time.monotonic() + timeout
    while agent.blobs.partials:
        assert time.monotonic() < deadline, "downloads still running"
        await asyncio.sleep(0.02)


def largest_layer(image: GeneratedImage) -> tuple[str, int]:
    blob = max(image.blobs, key=lambda b: b.size)
    return blob.digest, blob.size


def host(agent: Agent) -> str:
    return agent.url.removeprefix("http://")


async def pull(agent: Agent, repo_tag: str, dest: Path, creds: str | None = None) -> subprocess.CompletedProcess[str]:
    """skopeo-pull ``registry.test/REPO:TAG`` through the agent (skopeo runs in a thread)."""
    return await asyncio.to_thread(skopeo_pull, f"{host(agent)}/{REG}/{repo_tag}", dest, creds=creds)


def fill_disk(path: Path) -> None:
    """Write zeros to ``path`` until the disk is full (someone else takes the cache's disk)."""
    chunk = b"\0" * (1 << 20)
    with open(path, "wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
