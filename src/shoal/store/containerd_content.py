"""The node's containerd content store, read-only: blobs the runtime already holds.

containerd keeps every blob it pulled as ``<root>/blobs/<algorithm>/<hex>`` (root: its
``io.containerd.content.v1.content`` directory). Images that were on the node before Shoal,
or that left Shoal's cache, are there. Nothing here is trusted: whoever reads a blob from it
checks it against the digest (``PartialBlob`` does, as for every other source).
"""

from __future__ import annotations

from pathlib import Path

from shoal.core.digest import Digest

DEFAULT_ROOT = Path("/var/lib/containerd/io.containerd.content.v1.content")


class ContainerdContent:
    """Blob paths in a containerd content store at ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: Digest) -> Path | None:
        """The blob's file, if containerd holds it complete (in-progress ones are in ``ingest/``)."""
        path = self.root / "blobs" / digest.algorithm / digest.hex
        try:
            return path if path.is_file() else None
        except OSError:
            return None
