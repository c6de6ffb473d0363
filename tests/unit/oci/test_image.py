"""Which manifests of an index to fetch, and which blobs a manifest names."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.oci.image import BlobRef, ImageError, image_blobs, pick_platforms

INDEX: dict[str, Any] = {
    "manifests": [
        {"digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}},
        {"digest": "sha256:arm", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
    ]
}


class TestPickPlatforms:
    """The platforms asked for, or all; a platform the image lacks is an error."""

    @pytest.mark.parametrize(
        ("platforms", "expected"),
        [
            (["linux/amd64"], ["sha256:amd"]),
            (["linux/arm64/v8", "linux/amd64"], ["sha256:arm", "sha256:amd"]),
            (["all"], ["sha256:amd", "sha256:arm"]),
        ],
    )
    def test_pick(self, platforms: list[str], expected: list[str]) -> None:
        assert pick_platforms(INDEX, platforms) == expected

    def test_missing_platform(self) -> None:
        with pytest.raises(ImageError, match="no linux/s390x manifest"):
            pick_platforms(INDEX, ["linux/s390x"])

    def test_index_without_platforms_yields_its_first_entry(self) -> None:
        assert pick_platforms({"manifests": [{"digest": "sha256:x"}]}, ["linux/amd64"]) == ["sha256:x"]


def test_image_blobs() -> None:
    manifest = {"config": {"digest": "sha256:c", "size": 5}, "layers": [{"digest": "sha256:l", "size": 9}]}
    assert image_blobs(manifest) == [BlobRef("sha256:c", 5), BlobRef("sha256:l", 9)]
    with pytest.raises(ImageError):
        image_blobs({"layers": []})
