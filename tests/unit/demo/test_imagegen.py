"""The image generator writes valid, deterministic OCI layouts of the size asked for."""

from __future__ import annotations

import hashlib
import json
import tarfile
import zlib
from pathlib import Path
from typing import Any

import pytest

from shoal.demo.imagegen import REF_NAME_ANNOTATION, BlobInfo, GeneratedImage, generate_image, parse_platform
from shoal.oci.mediatypes import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST

MiB = 1 << 20


def _json(image: GeneratedImage, digest: str) -> Any:
    return json.loads(image.blob_path(digest).read_bytes())


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


class TestSinglePlatform:
    """One manifest, its config and tar layers, all content-addressed correctly."""

    def test_layout_files_and_tag(self, tmp_path: Path) -> None:
        image = generate_image(tmp_path / "img", size=2 * MiB, layers=4, tag="v1")
        assert json.loads((image.layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
        index = json.loads((image.layout / "index.json").read_text())
        [entry] = index["manifests"]
        assert entry["digest"] == image.top_digest
        assert entry["mediaType"] == OCI_MANIFEST == image.top_media_type
        assert entry["annotations"] == {REF_NAME_ANNOTATION: "v1"}
        assert entry["size"] == image.blob_path(image.top_digest).stat().st_size

    def test_every_blob_matches_its_digest_and_size(self, tmp_path: Path) -> None:
        image = generate_image(tmp_path / "img", size=MiB, layers=3)
        for info in [*image.manifests, *image.blobs]:
            path = image.blob_path(info.digest)
            assert _sha256(path) == info.digest
            assert path.stat().st_size == info.size
        on_disk = {f"sha256:{p.name}" for p in (image.layout / "blobs" / "sha256").iterdir()}
        assert on_disk == {b.digest for b in [*image.manifests, *image.blobs]}

    def test_manifest_config_and_layers_agree(self, tmp_path: Path) -> None:
        image = generate_image(tmp_path / "img", size=MiB, layers=3, platforms=["linux/arm64/v8"])
        manifest = _json(image, image.top_digest)
        assert manifest["mediaType"] == OCI_MANIFEST
        assert manifest["config"]["mediaType"] == OCI_CONFIG
        layers = [layer["digest"] for layer in manifest["layers"]]
        assert {layer["mediaType"] for layer in manifest["layers"]} == {OCI_LAYER}
        config = _json(image, manifest["config"]["digest"])
        assert (config["os"], config["architecture"], config["variant"]) == ("linux", "arm64", "v8")
        assert config["rootfs"] == {"type": "layers", "diff_ids": layers}  # uncompressed: diff_id == digest
        assert {b.digest for b in image.blobs} == {*layers, manifest["config"]["digest"]}

    def test_layers_are_tars_of_one_incompressible_file(self, tmp_path: Path) -> None:
        image = generate_image(tmp_path / "img", size=MiB, layers=2)
        layers = [b for b in image.blobs if b.media_type == OCI_LAYER]
        assert len(layers) == 2
        for info in layers:
            with tarfile.open(image.blob_path(info.digest)) as tar:
                [member] = tar.getmembers()
                assert member.isfile()
                assert "/" not in member.name
                f = tar.extractfile(member)
                assert f is not None
                data = f.read()
            assert len(data) == member.size > 0
            assert len(zlib.compress(data, 6)) > 0.99 * len(data)

    @pytest.mark.parametrize(("size", "layers"), [(4 * MiB, 4), (3 * MiB, 3), (MiB, 1), (512 * 1024, 2)])
    def test_layer_bytes_equal_size_when_size_is_block_aligned(self, tmp_path: Path, size: int, layers: int) -> None:
        image = generate_image(tmp_path / "img", size=size, layers=layers)
        layer_sizes = [b.size for b in image.blobs if b.media_type == OCI_LAYER]
        assert len(layer_sizes) == layers
        assert sum(layer_sizes) == size
        assert max(layer_sizes) - min(layer_sizes) <= 512

    def test_unaligned_size_is_close(self, tmp_path: Path) -> None:
        image = generate_image(tmp_path / "img", size=1_000_001, layers=3)
        layer_total = sum(b.size for b in image.blobs if b.media_type == OCI_LAYER)
        assert 1_000_001 - 3 * 512 <= layer_total <= 1_000_001

    def test_blob_bytes_is_layers_plus_config(self, tmp_path: Path) -> None:
        image = generate_image(tmp_path / "img", size=MiB, layers=2)
        assert image.blob_bytes == sum(b.size for b in image.blobs)
        assert image.blob_bytes > MiB  # the config counts too


class TestDeterminism:
    """Same seed, same bytes; any other seed, other bytes."""

    def test_same_seed_same_digests(self, tmp_path: Path) -> None:
        a = generate_image(tmp_path / "a", size=MiB, layers=2, seed=7)
        b = generate_image(tmp_path / "b", size=MiB, layers=2, seed=7)
        assert a.top_digest == b.top_digest
        assert a.blobs == b.blobs

    def test_other_seed_shares_nothing(self, tmp_path: Path) -> None:
        a = generate_image(tmp_path / "a", size=MiB, layers=2, seed=1)
        b = generate_image(tmp_path / "b", size=MiB, layers=2, seed=2)
        assert not {x.digest for x in a.blobs} & {x.digest for x in b.blobs}

    def test_layers_within_an_image_differ(self, tmp_path: Path) -> None:
        image = generate_image(tmp_path / "img", size=0, layers=3)  # even empty files differ by name
        layers = [b.digest for b in image.blobs if b.media_type == OCI_LAYER]
        assert len(set(layers)) == 3


class TestMultiPlatform:
    """Several platforms make one manifest each under an OCI index."""

    def test_index_lists_each_platform(self, tmp_path: Path) -> None:
        platforms = ["linux/amd64", "linux/arm64/v8"]
        image = generate_image(tmp_path / "img", size=MiB, layers=2, platforms=platforms)
        assert image.top_media_type == OCI_INDEX
        index = _json(image, image.top_digest)
        assert index["mediaType"] == OCI_INDEX
        assert [m["platform"] for m in index["manifests"]] == [parse_platform(p) for p in platforms]
        assert [m.digest for m in image.manifests] == [*(m["digest"] for m in index["manifests"]), image.top_digest]

    def test_each_platform_has_its_own_layers_of_full_size(self, tmp_path: Path) -> None:
        image = generate_image(tmp_path / "img", size=MiB, layers=2, platforms=["linux/amd64", "linux/arm64"])
        layer_sets = []
        for descriptor in _json(image, image.top_digest)["manifests"]:
            manifest = _json(image, descriptor["digest"])
            assert sum(layer["size"] for layer in manifest["layers"]) == MiB
            layer_sets.append({layer["digest"] for layer in manifest["layers"]})
        assert not layer_sets[0] & layer_sets[1]
        assert image.blob_bytes > 2 * MiB


class TestLayoutAndValidation:
    """Layouts accumulate tags; bad arguments and digests are refused."""

    def test_second_tag_keeps_the_first(self, tmp_path: Path) -> None:
        first = generate_image(tmp_path / "img", size=MiB, tag="one", seed=1)
        second = generate_image(tmp_path / "img", size=MiB, tag="two", seed=2)
        index = json.loads((tmp_path / "img" / "index.json").read_text())
        refs = {m["annotations"][REF_NAME_ANNOTATION]: m["digest"] for m in index["manifests"]}
        assert refs == {"one": first.top_digest, "two": second.top_digest}

    def test_blob_bytes_counts_each_digest_once(self, tmp_path: Path) -> None:
        blob = BlobInfo("sha256:" + "a" * 64, 10, OCI_LAYER)
        image = GeneratedImage(tmp_path, "t", "sha256:" + "b" * 64, OCI_MANIFEST, [], [blob, blob])
        assert image.blob_bytes == 10

    @pytest.mark.parametrize("digest", ["sha256:../../etc", "sha256", "x/y:abc", "sha256:a/b"])
    def test_blob_path_refuses_traversal(self, tmp_path: Path, digest: str) -> None:
        image = GeneratedImage(tmp_path, "t", "sha256:" + "b" * 64, OCI_MANIFEST, [], [])
        with pytest.raises(ValueError, match="invalid digest"):
            image.blob_path(digest)

    @pytest.mark.parametrize(
        "kwargs",
        [{"size": -1}, {"layers": 0}, {"platforms": []}, {"platforms": ["linux"]}, {"platforms": ["a/b", "a/b"]}],
    )
    def test_bad_arguments(self, tmp_path: Path, kwargs: dict[str, Any]) -> None:
        args: dict[str, Any] = {"size": MiB, **kwargs}
        with pytest.raises(ValueError, match=r"size|layers|platform"):
            generate_image(tmp_path / "img", **args)
