"""``shoal status`` against a healthy setup and broken ones (real processes, a real registry).

Healthy: a scheduler, two agents, a containerd hosts.toml naming the agent, a webhook app.
Broken: the runtime config missing, an agent down, the scheduler down (and a pull that fell
back to the registry because of it).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from shoal.demo.fleet import LocalFleet, shoal_argv
from shoal.demo.imagegen import GeneratedImage, generate_image
from shoal.testing.procs import wait_until
from shoal.testing.registry import DistributionRegistry
from shoal.testing.skopeo import skopeo_pull
from shoal.webhook.config import WebhookConfig
from shoal.webhook.server import create_app

pytestmark = pytest.mark.real

MiB = 1 << 20
REGISTRY = "registry.test"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> GeneratedImage:
    return generate_image(tmp_path_factory.mktemp("images") / "status", size=4 * MiB, layers=2, seed=31)


@dataclass
class Setup:
    fleet: LocalFleet
    certs: Path
    conf: Path
    workdir: Path

    def hosts_toml(self, node: int) -> Path:
        path = self.certs / REGISTRY / "hosts.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        address = self.fleet.nodes[node].address
        path.write_text(
            f'server = "http://{REGISTRY}"\n\n[host."http://{address}"]\n  capabilities = ["pull", "resolve"]\n'
        )
        return path

    def containerd_config(self) -> Path:
        """A containerd config.toml whose config_path is the certs.d the test writes."""
        path = self.workdir / "containerd-config.toml"
        if not path.exists():
            path.write_text(
                f'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\nconfig_path = "{self.certs}"\n'
            )
        return path

    async def status(self, node: int, *extra: str) -> tuple[int, dict[str, Any]]:
        argv = shoal_argv(
            "status",
            "--agent",
            self.fleet.nodes[node].url,
            "--containerd-certs-dir",
            str(self.certs),
            "--registries-conf-dir",
            str(self.conf),
            "--containerd-config",
            str(self.containerd_config()),
            "--scheduler",
            self.fleet.schedulers[0][0],
            "--peer-token-file",
            str(self.fleet.token_file),
            "--scheduler-ca",
            str(self.fleet.ca_file),
            "--json",
            *extra,
        )
        done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=60, check=False)
        assert done.stdout, done.stderr
        return done.returncode, json.loads(done.stdout)


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"]}


@pytest.fixture
def setup(tmp_path: Path, image: GeneratedImage) -> Iterator[Setup]:
    with DistributionRegistry(tmp_path / "registry") as reg:
        reg.push(image, "team/app", "v1")
        with LocalFleet(tmp_path / "fleet", nodes=2, registries={REGISTRY: reg.url}) as fleet:
            s = Setup(fleet, tmp_path / "certs.d", tmp_path / "registries.conf.d", tmp_path)
            wait_until(lambda: _agents_listed(fleet) == 2, timeout=30, what="both agents announced")
            result = skopeo_pull(f"{fleet.nodes[0].address}/{REGISTRY}/team/app:v1", tmp_path / "pulled")
            assert result.returncode == 0, result.stderr
            yield s


def _agents_listed(fleet: LocalFleet) -> int:
    """How many agents the scheduler lists: an agent announces itself at start, and again every
    10 s when its first try came before the scheduler answered."""
    request = urllib.request.Request(
        f"{fleet.schedulers[0][0]}/v1/agents", headers={"Authorization": f"Bearer {fleet.token_file.read_text()}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=3, context=fleet.scheduler_context()) as resp:
            return len(json.loads(resp.read())["agents"])
    except OSError:
        return 0


class TestStatus:
    """What shoal status reports, check by check, and its exit status."""

    async def test_healthy(self, setup: Setup) -> None:
        setup.hosts_toml(0)
        webhook = TestServer(create_app(WebhookConfig.build([REGISTRY])))
        await webhook.start_server()
        try:
            code, report = await setup.status(0, "--webhook", str(webhook.make_url("")).rstrip("/"))
        finally:
            await webhook.close()
        checks = by_name(report)
        assert code == 0, report
        assert report["ok"] is True
        assert {n: c["status"] for n, c in checks.items()} == {
            "agent": "ok",
            "scheduler": "ok",
            "runtime-config": "ok",
            "containerd-config": "ok",
            "cache": "ok",
            "fallbacks": "ok",
            "schedulers": "ok",
            "agents": "ok",
            "webhook": "ok",
        }
        assert checks["scheduler"]["summary"] == "1/1 schedulers reachable"
        assert checks["agents"]["summary"] == "2/2 agents ready"
        assert checks["runtime-config"]["details"] == [f"{REGISTRY}: {setup.certs / REGISTRY / 'hosts.toml'}"]
        assert "from the registry" in checks["fallbacks"]["summary"]
        assert checks["cache"]["summary"].endswith("entries (no cap but the disk)")

    async def test_runtime_config_missing(self, setup: Setup) -> None:
        code, report = await setup.status(0)
        checks = by_name(report)
        assert code == 1
        assert checks["runtime-config"]["status"] == "fail"
        assert REGISTRY in checks["runtime-config"]["summary"]
        assert checks["agent"]["status"] == "ok"

    async def test_runtime_config_for_another_agent_port(self, setup: Setup) -> None:
        path = setup.hosts_toml(0)
        path.write_text(path.read_text().replace(setup.fleet.nodes[0].address, "127.0.0.1:5999"))
        code, report = await setup.status(0)
        checks = by_name(report)
        assert code == 1
        assert checks["runtime-config"]["status"] == "fail"
        assert any("no [host] on port" in d for d in checks["runtime-config"]["details"])

    async def test_agent_down(self, setup: Setup) -> None:
        setup.hosts_toml(1)
        await asyncio.to_thread(setup.fleet.kill, 1)
        code, report = await setup.status(1, "--registry", REGISTRY)
        checks = by_name(report)
        assert code == 1
        assert checks["agent"]["status"] == "fail"
        assert "does not answer" in checks["agent"]["summary"]
        # the scheduler still lists it (until its announcements expire); the probe finds it dead
        assert checks["agents"]["status"] == "warn"
        assert checks["agents"]["summary"] == "1/2 agents ready"
        assert checks["runtime-config"]["status"] == "ok"  # checked from --registry

    async def test_scheduler_down_and_the_fallback_it_caused(self, setup: Setup) -> None:
        setup.hosts_toml(1)
        await asyncio.to_thread(setup.fleet.kill_scheduler)
        result = await asyncio.to_thread(
            skopeo_pull, f"{setup.fleet.nodes[1].address}/{REGISTRY}/team/app:v1", setup.workdir / "pulled-1"
        )
        assert result.returncode == 0, result.stderr  # the pull still works, from the registry
        code, report = await setup.status(1)
        checks = by_name(report)
        assert code == 1
        assert checks["scheduler"]["status"] == "fail"
        assert checks["schedulers"]["status"] == "fail"
        assert checks["fallbacks"]["status"] == "warn"
        assert any(d.startswith("swarm gave up (") for d in checks["fallbacks"]["details"]), checks["fallbacks"]
