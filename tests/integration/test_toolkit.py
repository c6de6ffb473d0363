"""The test toolkit against the real programs: the egress counter every proof relies on.

Generated layouts must be readable by skopeo; a full pull through the real registry must
log exactly the image's blob bytes; containerd must pull and unpack (directly and through
a mirror); DemoOrigin must serve skopeo and count the same bytes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from shoal.demo.imagegen import GeneratedImage, generate_image
from shoal.demo.origin import DemoOrigin
from shoal.oci.mediatypes import OCI_INDEX, OCI_LAYER
from shoal.testing.containerd import Containerd, write_hosts_toml
from shoal.testing.procs import ProgramMissingError, free_port, require
from shoal.testing.registry import DistributionRegistry, parse_log_line
from shoal.testing.skopeo import inspect_raw, layout_digests, skopeo_pull

pytestmark = pytest.mark.real


def _image_digests(image: GeneratedImage) -> set[str]:
    return {b.digest for b in [*image.manifests, *image.blobs]}


def _platform_blob_bytes(image: GeneratedImage, platform_index: int) -> int:
    """Blob bytes of one platform of a multi-arch image (its config plus its layers)."""
    index = json.loads(image.blob_path(image.top_digest).read_bytes())
    manifest = json.loads(image.blob_path(index["manifests"][platform_index]["digest"]).read_bytes())
    return int(manifest["config"]["size"]) + sum(int(layer["size"]) for layer in manifest["layers"])


class TestGeneratedLayouts:
    """skopeo reads generated layouts as valid OCI images."""

    def test_skopeo_reads_single_manifest(self, small_image: GeneratedImage, tmp_path: Path) -> None:
        raw = inspect_raw(small_image.layout_ref, workdir=tmp_path)
        assert raw == json.loads(small_image.blob_path(small_image.top_digest).read_bytes())
        assert len(raw["layers"]) == 3

    def test_skopeo_reads_index(self, multiarch_image: GeneratedImage, tmp_path: Path) -> None:
        raw = inspect_raw(multiarch_image.layout_ref, workdir=tmp_path)
        assert raw["mediaType"] == OCI_INDEX
        assert [m["platform"]["architecture"] for m in raw["manifests"]] == ["amd64", "arm64"]


class TestRegistryEgressCounter:
    """docker-registry's JSON log counts exactly the blob bytes a pull received."""

    def test_push_does_not_count_and_pull_counts_exactly(
        self, registry: DistributionRegistry, small_image: GeneratedImage, tmp_path: Path
    ) -> None:
        ref = registry.push(small_image, "team/app")
        assert ref == f"{registry.host}/team/app:latest"
        assert registry.blob_bytes_served() == 0  # POST/PATCH/PUT/HEAD of a push
        mark = registry.mark()
        result = skopeo_pull(ref, tmp_path / "pulled")
        assert result.returncode == 0, result.stderr
        assert layout_digests(tmp_path / "pulled") == _image_digests(small_image)
        assert registry.since(mark) == small_image.blob_bytes
        gets = [r for r in registry.requests(mark) if r.is_blob_get]
        assert sorted(r.digest or "" for r in gets) == sorted(b.digest for b in small_image.blobs)
        assert all(r.status == 200 and "skopeo" in r.user_agent for r in gets)

    def test_second_pull_doubles_the_count(
        self, registry: DistributionRegistry, small_image: GeneratedImage, tmp_path: Path
    ) -> None:
        ref = registry.push(small_image, "team/app", tag="v2")
        for name in ("a", "b"):
            skopeo_pull(ref, tmp_path / name, check=True)
        assert registry.blob_bytes_served() == 2 * small_image.blob_bytes
        assert registry.blob_bytes_by_digest() == {b.digest: 2 * b.size for b in small_image.blobs}

    def test_multiarch_push_and_pull_all(
        self, registry: DistributionRegistry, multiarch_image: GeneratedImage, tmp_path: Path
    ) -> None:
        ref = registry.push(multiarch_image, "team/multi")
        raw = inspect_raw(f"docker://{ref}", workdir=tmp_path)
        assert raw["mediaType"] == OCI_INDEX
        skopeo_pull(ref, tmp_path / "pulled", check=True)
        assert layout_digests(tmp_path / "pulled") == _image_digests(multiarch_image)
        assert registry.blob_bytes_served() == multiarch_image.blob_bytes

    def test_range_request_counts_only_the_range(
        self, registry: DistributionRegistry, small_image: GeneratedImage
    ) -> None:
        registry.push(small_image, "team/app")
        layer = next(b for b in small_image.blobs if b.media_type == OCI_LAYER)
        request = urllib.request.Request(
            f"{registry.url}/v2/team/app/blobs/{layer.digest}", headers={"Range": "bytes=100-1123"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 206
            assert len(response.read()) == 1024
        assert registry.blob_bytes_served() == 1024

    def test_log_line_parsing(self) -> None:
        line = (
            '{"http.request.method":"GET","http.request.uri":"/v2/a/blobs/sha256:ab",'
            '"http.response.status":200,"http.response.written":7,"msg":"response completed"}'
        )
        entry = parse_log_line(line)
        assert entry is not None
        assert (entry.is_blob_get, entry.digest, entry.written) == (True, "sha256:ab", 7)
        assert parse_log_line('{"msg":"listening on 127.0.0.1:5000"}') is None
        assert parse_log_line("not json") is None


class TestPrivateRegistry:
    """htpasswd auth: the right credentials pull, wrong or missing ones do not."""

    def test_credentials(
        self, private_registry: DistributionRegistry, small_image: GeneratedImage, tmp_path: Path
    ) -> None:
        assert private_registry.creds == "alice:s3cret"
        ref = private_registry.push(small_image, "secret/app")
        wrong = skopeo_pull(ref, tmp_path / "wrong", creds="alice:nope")
        assert wrong.returncode != 0
        assert "unauthorized" in wrong.stderr.lower()
        anonymous = skopeo_pull(ref, tmp_path / "anonymous")
        assert anonymous.returncode != 0
        mark = private_registry.mark()
        right = skopeo_pull(ref, tmp_path / "right", creds="alice:s3cret")
        assert right.returncode == 0, right.stderr
        assert layout_digests(tmp_path / "right") == _image_digests(small_image)
        assert private_registry.since(mark) == small_image.blob_bytes

    def test_unauthenticated_http_is_refused(self, private_registry: DistributionRegistry) -> None:
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{private_registry.url}/v2/", timeout=10)
        info.value.close()
        assert info.value.code == 401
        token = base64.b64encode(b"alice:s3cret").decode()
        request = urllib.request.Request(f"{private_registry.url}/v2/", headers={"Authorization": f"Basic {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200


class TestContainerd:
    """A private containerd pulls and unpacks, directly or through a mirror."""

    def test_direct_pull_unpacks(
        self, containerd: Containerd, registry: DistributionRegistry, small_image: GeneratedImage
    ) -> None:
        ref = registry.push(small_image, "team/app")
        mark = registry.mark()
        containerd.pull_direct(ref)
        assert ref in containerd.images()
        assert containerd.unpacked(ref)
        assert {b.digest for b in small_image.blobs} <= containerd.content_digests()
        assert registry.since(mark) == small_image.blob_bytes
        hosts = (containerd.hosts_dir / registry.host / "hosts.toml").read_text()
        assert f'server = "http://{registry.host}"' in hosts

    def test_forget_then_pull_again_refetches(
        self, containerd: Containerd, registry: DistributionRegistry, small_image: GeneratedImage
    ) -> None:
        ref = registry.push(small_image, "team/app")
        containerd.pull_direct(ref)
        containerd.forget()
        assert containerd.images() == []
        assert containerd.content_digests() == set()
        containerd.pull_direct(ref)
        assert registry.blob_bytes_served() == 2 * small_image.blob_bytes

    async def test_pull_via_mirror_uses_the_mirror_then_falls_back(
        self,
        containerd: Containerd,
        registry: DistributionRegistry,
        multiarch_image: GeneratedImage,
    ) -> None:
        ref = await asyncio.to_thread(registry.push, multiarch_image, "team/multi")
        mirror = DemoOrigin({"team/multi": multiarch_image})
        mirror_url = await mirror.start()
        try:
            await asyncio.to_thread(containerd.pull_via_mirror, ref, mirror_url, platform="linux/amd64")
        finally:
            await mirror.stop()
        assert ref in await asyncio.to_thread(containerd.images)
        assert mirror.blob_bytes_served == _platform_blob_bytes(multiarch_image, 0)
        assert await asyncio.to_thread(registry.blob_bytes_served) == 0
        # with the mirror gone, containerd falls back to the hosts.toml server
        await asyncio.to_thread(containerd.forget)
        await asyncio.to_thread(containerd.pull_via_mirror, ref, mirror_url, platform="linux/amd64")
        assert await asyncio.to_thread(registry.blob_bytes_served) == _platform_blob_bytes(multiarch_image, 0)

    def test_native_snapshotter(
        self, tmp_path: Path, registry: DistributionRegistry, small_image: GeneratedImage
    ) -> None:
        ref = registry.push(small_image, "team/app")
        with Containerd(tmp_path / "native", snapshotter="native") as daemon:
            daemon.pull_direct(ref)
            assert daemon.unpacked(ref)
            pid = daemon.pid
        assert pid is not None
        assert not Path(f"/proc/{pid}").exists()  # stopped and reaped

    def test_hosts_toml_for_a_mirror(self, tmp_path: Path) -> None:
        path = write_hosts_toml(tmp_path, "registry.example.com", mirrors=["http://127.0.0.1:65001"])
        assert path == tmp_path / "registry.example.com" / "hosts.toml"
        assert path.read_text().splitlines()[:4] == [
            'server = "http://registry.example.com"',
            "",
            '[host."http://127.0.0.1:65001"]',
            '  capabilities = ["pull", "resolve"]',
        ]


class TestDemoOrigin:
    """skopeo pulls from DemoOrigin, whose counter matches the image's bytes."""

    async def test_skopeo_pulls_multiarch(self, multiarch_image: GeneratedImage, tmp_path: Path) -> None:
        origin = DemoOrigin({"demo/app": multiarch_image})
        url = await origin.start()
        try:
            host = url.removeprefix("http://")
            result = await asyncio.to_thread(skopeo_pull, f"{host}/demo/app:latest", tmp_path / "pulled")
        finally:
            await origin.stop()
        assert result.returncode == 0, result.stderr
        assert layout_digests(tmp_path / "pulled") == _image_digests(multiarch_image)
        assert origin.blob_bytes_served == multiarch_image.blob_bytes
        assert dict(origin.blob_bytes_by_digest) == {b.digest: b.size for b in multiarch_image.blobs}


class TestHelpers:
    """Process helpers fail clearly and registries clean up after themselves."""

    def test_missing_program_is_a_clear_error(self) -> None:
        with pytest.raises(ProgramMissingError, match="apt-get install"):
            require("shoal-no-such-program")

    def test_registry_stops_by_pid_and_frees_its_port(self, tmp_path: Path) -> None:
        addr = f"127.0.0.1:{free_port()}"
        with DistributionRegistry(tmp_path / "r", addr=addr) as reg:
            assert reg.host == addr
            pid = reg.pid
        assert pid is not None
        with DistributionRegistry(tmp_path / "r2", addr=addr) as again:  # the port is free again
            assert again.pid != pid

    def test_generated_image_pushes_under_another_tag(self, registry: DistributionRegistry, tmp_path: Path) -> None:
        image = generate_image(tmp_path / "img", size=64 * 1024, layers=1, tag="orig")
        ref = registry.push(image, "x/y", tag="renamed")
        assert ref.endswith("/x/y:renamed")
        assert inspect_raw(f"docker://{ref}", workdir=tmp_path)["layers"][0]["digest"] in {
            b.digest for b in image.blobs
        }
