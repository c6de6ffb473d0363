"""Pure helpers over manifest documents: which platforms an index offers, which blobs an image has."""

from __future__ import annotations

import platform as _platform
from dataclasses import dataclass
from typing import Any

from shoal.oci.mediatypes import INDEX_TYPES

ALL_PLATFORMS = "all"
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm"}


class ImageError(ValueError):
    """A manifest that does not describe an image the way OCI says."""


@dataclass(frozen=True, slots=True)
class BlobRef:
    digest: str
    size: int


def host_platform() -> str:
    """``linux/<GOARCH>`` of this machine, as image indexes name platforms."""
    machine = _platform.machine().lower()
    return f"linux/{_ARCH.get(machine, machine)}"


def is_index(doc: dict[str, Any], media_type: str) -> bool:
    return media_type in INDEX_TYPES or "manifests" in doc


def pick_platforms(index: dict[str, Any], platforms: list[str]) -> list[str]:
    """Digests of the index entries for ``platforms`` (``["all"]``: every entry).

    A platform the index lacks is an error, except that an index with no platform fields
    at all yields its first entry (as runtimes do).
    """
    manifests = index.get("manifests") or []
    if not manifests:
        raise ImageError("image index lists no manifests")
    if ALL_PLATFORMS in platforms:
        return [str(m["digest"]) for m in manifests]
    if not any(m.get("platform") for m in manifests):
        return [str(manifests[0]["digest"])]
    out = []
    for wanted in platforms:
        os_name, _, arch = wanted.partition("/")
        arch, _, variant = arch.partition("/")
        for entry in manifests:
            p = entry.get("platform") or {}
            if (
                p.get("os") == os_name
                and p.get("architecture") == arch
                and (not variant or p.get("variant") == variant)
            ):
                out.append(str(entry["digest"]))
                break
        else:
            offered = sorted(
                {
                    f"{(m.get('platform') or {}).get('os')}/{(m.get('platform') or {}).get('architecture')}"
                    for m in manifests
                }
            )
            raise ImageError(f"the image has no {wanted} manifest (it has {', '.join(offered)})")
    return list(dict.fromkeys(out))


def image_blobs(manifest: dict[str, Any]) -> list[BlobRef]:
    """The config and the layers of an image manifest."""
    try:
        descriptors = [manifest["config"], *(manifest.get("layers") or [])]
        return [BlobRef(str(d["digest"]), int(d["size"])) for d in descriptors]
    except (KeyError, TypeError, ValueError) as exc:
        raise ImageError(f"not an image manifest: {exc!r}") from None
