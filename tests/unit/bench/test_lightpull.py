"""``--client light`` against the real registry: manifest, then every blob, byte for byte."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.fleet.lightpull import PullError, blob_path, pull
from bench.fleet.scenarios.clients import LIGHTPULL

from shoal.demo.imagegen import GeneratedImage, generate_image
from shoal.testing.registry import DistributionRegistry

MIB = 1 << 20


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[DistributionRegistry]:
    with DistributionRegistry(tmp_path / "registry") as reg:
        yield reg


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def run_lightpull(*args: str) -> subprocess.CompletedProcess[str]:
    """As a fleet node runs it: the script by path, in a process of its own."""
    return subprocess.run(
        [sys.executable, str(LIGHTPULL), *args], capture_output=True, text=True, timeout=60, check=False
    )


def assert_pulled(dest: Path, image: GeneratedImage) -> None:
    for blob in image.blobs:
        assert sha256(blob_path(dest, blob.digest)) == blob.digest


@pytest.mark.real
class TestAgainstDistribution:
    """What a node's light client leaves on disk, from docker-registry 2.8."""

    def test_image_manifest_then_blobs(self, tmp_path: Path, registry: DistributionRegistry) -> None:
        image = generate_image(tmp_path / "img", size=3 * MIB, layers=3, tag="v1")
        registry.push(image, "bench/app")
        got = pull(registry.url, "bench/app", "v1", tmp_path / "out")
        assert got == image.blob_bytes
        assert_pulled(tmp_path / "out", image)
        assert '"layers"' in (tmp_path / "out" / "manifest.json").read_text()

    def test_index_is_followed_to_linux_amd64(self, tmp_path: Path, registry: DistributionRegistry) -> None:
        image = generate_image(tmp_path / "img", size=MIB, layers=2, tag="v2", platforms=("linux/arm64", "linux/amd64"))
        registry.push(image, "bench/app")
        pull(registry.url, "bench/app", "v2", tmp_path / "out")
        pulled = {p.name for p in (tmp_path / "out" / "blobs" / "sha256").iterdir()}
        # one platform's config and layers, not the other's
        assert 0 < len(pulled) < len({b.digest for b in image.blobs})
        for name in pulled:
            assert sha256(tmp_path / "out" / "blobs" / "sha256" / name) == f"sha256:{name}"

    def test_as_the_fleet_runs_it(self, tmp_path: Path, registry: DistributionRegistry) -> None:
        image = generate_image(tmp_path / "img", size=2 * MIB, layers=2, tag="v1")
        registry.push(image, "bench/app")
        proc = run_lightpull(registry.url, "bench/app", "v1", str(tmp_path / "out"))
        assert proc.returncode == 0, proc.stderr
        assert_pulled(tmp_path / "out", image)

    def test_a_ready_pull_waits_for_its_go(self, tmp_path: Path, registry: DistributionRegistry) -> None:
        """``--ready``: set up before the clock, not one request before SIGUSR1."""
        image = generate_image(tmp_path / "img", size=MIB, layers=1, tag="v1")
        registry.push(image, "bench/app")
        ready, out = tmp_path / "ready", tmp_path / "out"
        argv = [sys.executable, str(LIGHTPULL), registry.url, "bench/app", "v1", str(out), "--ready", str(ready)]
        with subprocess.Popen(argv) as proc:
            try:
                deadline = time.monotonic() + 30
                while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert ready.exists()
                time.sleep(0.2)
                assert proc.poll() is None  # waiting for its go
                assert not out.exists()
                proc.send_signal(signal.SIGUSR1)
                assert proc.wait(30) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
        assert_pulled(out, image)

    def test_an_unknown_tag_fails_with_one_line(self, tmp_path: Path, registry: DistributionRegistry) -> None:
        proc = run_lightpull(registry.url, "bench/app", "nope", str(tmp_path / "out"))
        assert proc.returncode == 1
        assert proc.stderr.strip().startswith("lightpull: GET ")
        assert "HTTP 404" in proc.stderr


def test_a_digest_with_a_path_in_it_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PullError, match="invalid digest"):
        blob_path(tmp_path, "sha256:../../etc")


def test_nothing_listening_is_a_pull_error(tmp_path: Path) -> None:
    with pytest.raises(PullError, match=r"GET http://127\.0\.0\.1:9/v2/"):
        pull("http://127.0.0.1:9", "bench/app", "v1", tmp_path)
