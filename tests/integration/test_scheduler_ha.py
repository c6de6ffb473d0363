"""Two schedulers, one SIGKILLed mid-rollout: every pull completes, the origin serves about once.

The fleet runs as the chart does: schedulers over TLS 1.3 holding one CA, agents enrolled for
node certificates; ``shoal status`` lists the cluster through the survivor, verifying it.

Agents spread blobs over both schedulers by rendezvous hashing; the one killed is the owner
of the largest layer, so the rollout's biggest transfer loses its scheduler while running.
The origin is Shoal's demo origin capped at 8 MiB/s so that the kill lands mid-blob.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from shoal.demo.fleet import LocalFleet, shoal_argv
from shoal.demo.imagegen import GeneratedImage, generate_image
from shoal.demo.origin import DemoOrigin
from shoal.demo.puller import pull_image
from shoal.p2p.rendezvous import rank_schedulers

pytestmark = pytest.mark.real

MiB = 1 << 20
REGISTRY = "registry.test"
NODES = 6


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> GeneratedImage:
    """4 layers, 32 MiB: ~4 s from the capped origin, so blobs of both schedulers are in flight."""
    return generate_image(tmp_path_factory.mktemp("images") / "ha", size=32 * MiB, layers=4, seed=21)


class TestSchedulerHA:
    """Losing a scheduler replica costs a re-announce, not a pull."""

    async def test_scheduler_sigkilled_mid_rollout(self, tmp_path: Path, image: GeneratedImage) -> None:
        origin = DemoOrigin({"team/app": image}, upload_rate=8 * MiB)
        url = await origin.start()
        fleet = LocalFleet(tmp_path / "fleet", nodes=NODES, schedulers=2, registries={REGISTRY: url}, tls=True)
        await asyncio.to_thread(fleet.start)
        try:
            urls = [u for u, _ in fleet.schedulers]
            layer = max(image.blobs, key=lambda b: b.size)
            owner = urls.index(rank_schedulers(layer.digest, urls)[0])
            owned = {b.digest for b in image.blobs if rank_schedulers(b.digest, urls)[0] == urls[owner]}
            pulls = [asyncio.create_task(pull_image(n.url, f"{REGISTRY}/team/app", "latest")) for n in fleet.nodes]
            while origin.blob_bytes_served < image.blob_bytes // 4:
                await asyncio.sleep(0.05)
            victim = fleet.schedulers[owner][1]
            os.kill(victim.pid, signal.SIGKILL)
            killed_at = origin.blob_bytes_served
            results = await asyncio.gather(*pulls)
            survivor = urls[1 - owner]
            argv = shoal_argv(
                "status",
                "--agent",
                fleet.nodes[0].url,
                "--scheduler",
                survivor,
                "--scheduler-ca",
                str(fleet.ca_file),
                "--peer-token-file",
                str(fleet.token_file),
                "--json",
            )
            done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=60)
            status = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
        finally:
            await asyncio.to_thread(fleet.stop)
            await origin.stop()
        # pull_image checks every blob's digest as it streams
        assert [r.blob_bytes for r in results] == [image.blob_bytes] * NODES
        assert layer.digest in owned
        assert killed_at < image.blob_bytes, "the scheduler died after the origin had served everything"
        ratio = origin.blob_bytes_served / image.blob_bytes
        print(f"\norigin served {ratio:.2f}x the image ({origin.blob_bytes_served} bytes) with a scheduler killed")
        assert ratio < 2.0, f"origin served {ratio:.2f}x the image"
        # the surviving replica still knows every agent (preheat and status keep working)
        assert status["agents"]["status"] == "ok", status["agents"]
        assert status["agents"]["summary"].startswith(f"{NODES}/{NODES}"), status["agents"]
        assert all((fleet.tls_dir(i) / "node.pem").is_file() for i in range(NODES))
