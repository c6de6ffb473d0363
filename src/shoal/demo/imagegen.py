"""Generate deterministic OCI images on disk (an OCI image layout) of any size.

Each layer is an uncompressed tar archive holding one file of pseudo-random, incompressible
bytes, so real runtimes can unpack it and no transport can cheat by compressing. Layer data
is streamed to disk while it is hashed: generating a 512 MiB image never holds a layer in
memory. The same ``seed`` always gives byte-identical blobs.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.oci.mediatypes import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST

__all__ = ["BlobInfo", "GeneratedImage", "generate_image", "parse_platform"]

REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
_CHUNK = 1 << 20
_BLOCK = tarfile.BLOCKSIZE  # 512
_TAR_END = 2 * _BLOCK  # two zero blocks close an archive
_CREATED = "2024-01-01T00:00:00Z"


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """One content-addressed object of an image."""

    digest: str
    size: int
    media_type: str

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    """An image written as an OCI image layout, and what a client will fetch to pull it."""

    layout: Path
    tag: str
    top_digest: str
    top_media_type: str
    manifests: list[BlobInfo]
    blobs: list[BlobInfo]

    @property
    def blob_bytes(self) -> int:
        """Bytes of all layers and configs, each distinct digest counted once."""
        return sum({b.digest: b.size for b in self.blobs}.values())

    @property
    def layout_ref(self) -> str:
        """``oci:LAYOUT:TAG``, the source reference skopeo understands."""
        return f"oci:{self.layout}:{self.tag}"

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hexpart = digest.partition(":")
        if not hexpart or "/" in hexpart or "/" in algorithm or ".." in digest:
            raise ValueError(f"invalid digest {digest[:80]!r}")
        return self.layout / "blobs" / algorithm / hexpart

    def media_type_of(self, digest: str) -> str | None:
        for info in (*self.manifests, *self.blobs):
            if info.digest == digest:
                return info.media_type
        return None


def parse_platform(platform: str) -> dict[str, str]:
    """``linux/arm64/v8`` -> ``{"os": "linux", "architecture": "arm64", "variant": "v8"}``."""
    parts = platform.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"invalid platform {platform!r}: want os/arch[/variant]")
    out = {"os": parts[0], "architecture": parts[1]}
    if len(parts) == 3:
        out["variant"] = parts[2]
    return out


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class _BlobWriter:
    def __init__(self, layout: Path) -> None:
        self.dir = layout / "blobs" / "sha256"
        self.dir.mkdir(parents=True, exist_ok=True)

    def write_bytes(self, data: bytes, media_type: str) -> BlobInfo:
        digest = hashlib.sha256(data).hexdigest()
        path = self.dir / digest
        if not path.exists() or path.stat().st_size != len(data):
            tmp = self.dir / f".tmp-{digest}"
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return BlobInfo(f"sha256:{digest}", len(data), media_type)

    def write_json(self, doc: dict[str, Any], media_type: str) -> BlobInfo:
        return self.write_bytes(json.dumps(doc, indent=2, sort_keys=True).encode(), media_type)

    def write_layer(self, name: str, data_size: int, rng: random.Random) -> BlobInfo:
        """Stream a one-file tar archive to disk, hashing as it goes."""
        info = tarfile.TarInfo(name)
        info.size = data_size
        info.mode = 0o644
        info.mtime = 0
        info.uname = info.gname = "root"
        header = info.tobuf(format=tarfile.USTAR_FORMAT)
        pad = -data_size % _BLOCK
        hasher = hashlib.sha256()
        tmp = self.dir / f".tmp-layer-{os.getpid()}-{name}"
        size = 0
        with open(tmp, "wb") as out:

            def put(chunk: bytes) -> None:
                nonlocal size
                hasher.update(chunk)
                out.write(chunk)
                size += len(chunk)

            put(header)
            remaining = data_size
            while remaining > 0:
                n = min(_CHUNK, remaining)
                put(rng.randbytes(n))
                remaining -= n
            put(b"\0" * (pad + _TAR_END))
        digest = hasher.hexdigest()
        os.replace(tmp, self.dir / digest)
        return BlobInfo(f"sha256:{digest}", size, OCI_LAYER)


def _data_size(layer_size: int) -> int:
    """File size that makes the whole tar archive close to ``layer_size`` bytes."""
    overhead = _BLOCK + _TAR_END
    return max(0, (layer_size - overhead) // _BLOCK * _BLOCK)


def _write_platform(
    writer: _BlobWriter, *, size: int, layers: int, seed: int, index: int, platform: str
) -> tuple[BlobInfo, list[BlobInfo]]:
    plat = parse_platform(platform)
    layer_infos: list[BlobInfo] = []
    for j, layer_size in enumerate(_split(size, layers)):
        rng = random.Random(f"shoal-imagegen/{seed}/{platform}/{j}")
        name = f"shoal-{seed}-{index}-{j}.bin"
        layer_infos.append(writer.write_layer(name, _data_size(layer_size), rng))
    config = {
        **plat,
        "created": _CREATED,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Labels": {"dev.shoal.generated": "true", "dev.shoal.seed": str(seed)},
        },
        "rootfs": {"type": "layers", "diff_ids": [b.digest for b in layer_infos]},
        "history": [{"created": _CREATED, "created_by": f"shoal imagegen layer {j}"} for j in range(len(layer_infos))],
    }
    config_info = writer.write_json(config, OCI_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_info.descriptor(),
        "layers": [b.descriptor() for b in layer_infos],
    }
    manifest_info = writer.write_json(manifest, OCI_MANIFEST)
    return manifest_info, [config_info, *layer_infos]


def _update_layout_index(layout: Path, top: BlobInfo, tag: str) -> None:
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index_path = layout / "index.json"
    entries: list[dict[str, Any]] = []
    if index_path.exists():
        old = json.loads(index_path.read_text())
        entries = [e for e in old.get("manifests", []) if e.get("annotations", {}).get(REF_NAME_ANNOTATION) != tag]
    entries.append({**top.descriptor(), "annotations": {REF_NAME_ANNOTATION: tag}})
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    index_path.write_text(json.dumps(doc, indent=2))


def generate_image(
    dest: Path,
    *,
    size: int,
    layers: int = 4,
    tag: str = "latest",
    seed: int = 0,
    platforms: Sequence[str] = ("linux/amd64",),
) -> GeneratedImage:
    """Write an image of about ``size`` layer bytes per platform into the OCI layout ``dest``.

    Parameters:
        dest: layout directory; created if missing. An existing layout keeps its other tags.
        size: total layer bytes of each platform's image (tar archives round to 512 bytes).
        layers: number of layers per platform; the size is split evenly.
        tag: the name the layout's ``index.json`` gives the image.
        seed: same seed, same bytes.
        platforms: one manifest per platform; more than one adds an OCI index as the top.
    """
    if size < 0 or layers < 1:
        raise ValueError("size must be >= 0 and layers >= 1")
    if not platforms or len(set(platforms)) != len(platforms):
        raise ValueError("platforms must be a non-empty list without duplicates")
    layout = Path(dest)
    writer = _BlobWriter(layout)
    manifests: list[BlobInfo] = []
    blobs: dict[str, BlobInfo] = {}
    platform_manifests: list[dict[str, Any]] = []
    for i, platform in enumerate(platforms):
        manifest_info, platform_blobs = _write_platform(
            writer, size=size, layers=layers, seed=seed, index=i, platform=platform
        )
        manifests.append(manifest_info)
        blobs.update({b.digest: b for b in platform_blobs})
        platform_manifests.append({**manifest_info.descriptor(), "platform": parse_platform(platform)})
    if len(platforms) == 1:
        top = manifests[0]
    else:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": platform_manifests}
        top = writer.write_json(index, OCI_INDEX)
        manifests.append(top)
    _update_layout_index(layout, top, tag)
    return GeneratedImage(
        layout=layout,
        tag=tag,
        top_digest=top.digest,
        top_media_type=top.media_type,
        manifests=manifests,
        blobs=list(blobs.values()),
    )
