"""DemoOrigin speaks the OCI pull API over real sockets and counts the blob bytes it sends."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from shoal.demo.imagegen import GeneratedImage, generate_image
from shoal.demo.origin import DemoOrigin
from shoal.oci.mediatypes import OCI_INDEX, OCI_LAYER

MiB = 1 << 20


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> GeneratedImage:
    return generate_image(tmp_path_factory.mktemp("origin") / "img", size=MiB, layers=2, tag="v1")


@pytest.fixture
async def origin(image: GeneratedImage) -> AsyncIterator[DemoOrigin]:
    origin = DemoOrigin({"team/app": image})
    await origin.start()
    yield origin
    await origin.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _layer(image: GeneratedImage) -> str:
    return next(b.digest for b in image.blobs if b.media_type == OCI_LAYER)


class TestApi:
    """Base, manifest, blob and error responses look like a distribution registry's."""

    async def test_base_announces_api_version(self, origin: DemoOrigin, http: aiohttp.ClientSession) -> None:
        async with http.get(f"{origin.url}/v2/") as resp:
            assert resp.status == 200
            assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"

    async def test_manifest_by_tag_and_digest(
        self, origin: DemoOrigin, image: GeneratedImage, http: aiohttp.ClientSession
    ) -> None:
        expected = image.blob_path(image.top_digest).read_bytes()
        for reference in (image.tag, image.top_digest):
            async with http.get(f"{origin.url}/v2/team/app/manifests/{reference}") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == image.top_media_type
                assert resp.headers["Docker-Content-Digest"] == image.top_digest
                assert await resp.read() == expected
        async with http.head(f"{origin.url}/v2/team/app/manifests/{image.tag}") as resp:
            assert resp.status == 200
            assert int(resp.headers["Content-Length"]) == len(expected)
            assert await resp.read() == b""
        assert origin.blob_bytes_served == 0  # manifests are not blob egress

    async def test_full_blob_is_counted(
        self, origin: DemoOrigin, image: GeneratedImage, http: aiohttp.ClientSession
    ) -> None:
        digest = _layer(image)
        async with http.get(f"{origin.url}/v2/team/app/blobs/{digest}") as resp:
            assert resp.status == 200
            assert resp.headers["Docker-Content-Digest"] == digest
            body = await resp.read()
        assert body == image.blob_path(digest).read_bytes()
        assert origin.blob_bytes_served == len(body)
        assert origin.blob_bytes_by_digest == {digest: len(body)}

    async def test_head_blob_sends_and_counts_nothing(
        self, origin: DemoOrigin, image: GeneratedImage, http: aiohttp.ClientSession
    ) -> None:
        digest = _layer(image)
        async with http.head(f"{origin.url}/v2/team/app/blobs/{digest}") as resp:
            assert resp.status == 200
            assert int(resp.headers["Content-Length"]) == image.blob_path(digest).stat().st_size
        assert origin.blob_bytes_served == 0

    async def test_range_is_honoured_and_counted(
        self, origin: DemoOrigin, image: GeneratedImage, http: aiohttp.ClientSession
    ) -> None:
        digest = _layer(image)
        size = image.blob_path(digest).stat().st_size
        headers = {"Range": "bytes=1000-1999"}
        async with http.get(f"{origin.url}/v2/team/app/blobs/{digest}", headers=headers) as resp:
            assert resp.status == 206
            assert resp.headers["Content-Range"] == f"bytes 1000-1999/{size}"
            body = await resp.read()
        assert body == image.blob_path(digest).read_bytes()[1000:2000]
        assert origin.blob_bytes_served == 1000

    @pytest.mark.parametrize(
        ("path", "headers", "status", "code"),
        [
            ("/v2/nope/manifests/latest", {}, 404, "NAME_UNKNOWN"),
            ("/v2/team/app/manifests/other", {}, 404, "MANIFEST_UNKNOWN"),
            ("/v2/team/app/blobs/sha256:" + "0" * 64, {}, 404, "BLOB_UNKNOWN"),
            ("/v2/team/app/blobs/LAYER", {"Range": "bytes=99999999-"}, 416, "RANGE_NOT_SATISFIABLE"),
            ("/v2/team/app/blobs/LAYER", {"Range": "bytes=0-1,5-9"}, 400, "RANGE_INVALID"),
        ],
    )
    async def test_errors(
        self,
        origin: DemoOrigin,
        image: GeneratedImage,
        http: aiohttp.ClientSession,
        path: str,
        headers: dict[str, str],
        status: int,
        code: str,
    ) -> None:
        async with http.get(origin.url + path.replace("LAYER", _layer(image)), headers=headers) as resp:
            assert resp.status == status
            assert (await resp.json())["errors"][0]["code"] == code
        assert origin.blob_bytes_served == 0

    async def test_index_is_served_with_its_media_type(self, tmp_path: Path, http: aiohttp.ClientSession) -> None:
        image = generate_image(tmp_path / "multi", size=64 * 1024, layers=1, platforms=["linux/amd64", "linux/arm64"])
        origin = DemoOrigin({"multi": image})
        url = await origin.start()
        try:
            async with http.get(f"{url}/v2/multi/manifests/latest") as resp:
                assert resp.headers["Content-Type"] == OCI_INDEX
            async with http.get(f"{url}/v2/multi/tags/list") as resp:
                assert await resp.json() == {"name": "multi", "tags": ["latest"]}
        finally:
            await origin.stop()


class TestUploadRate:
    """The upload cap slows blob egress to about the configured rate."""

    async def test_capped_origin_is_slow(self, image: GeneratedImage, http: aiohttp.ClientSession) -> None:
        origin = DemoOrigin({"team/app": image}, upload_rate=1 * MiB)
        url = await origin.start()
        try:
            digest = _layer(image)  # 512 KiB
            start = time.monotonic()
            async with http.get(f"{url}/v2/team/app/blobs/{digest}") as resp:
                body = await resp.read()
            elapsed = time.monotonic() - start
        finally:
            await origin.stop()
        # 512 KiB minus a 102 KiB burst at 1 MiB/s needs at least ~0.39 s
        assert elapsed >= 0.35
        assert origin.blob_bytes_served == len(body)
