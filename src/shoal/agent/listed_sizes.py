"""Blob sizes as listed by the manifests the registry just served, per credentials.

A pull asks for the manifest, then for its blobs. In ``p2p`` mode a blob's download needs
its size before it can join the swarm (the join names the piece geometry), and the size has
come from a ``HEAD`` of the blob at the registry, which also proves that the client's
credentials may read it. That ``HEAD`` is one more registry round trip before the download
starts; at a rollout's start, with every node asking at once, it took 0.05-0.35 s.

The manifest the same credentials just read through this agent already lists each blob's
size. :class:`ListedSizes` keeps those sizes for a short while, keyed by (credentials,
registry, repository, digest), so the download can join at once while the ``HEAD`` still
runs alongside (``shoal.agent.swarm.source``). A listed size is only a guess: no byte
goes to the client before the registry confirmed the size and the credentials (the ``HEAD``,
or the origin fetch's own ``GET``), and the digest is checked over the whole blob as always.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable

from shoal.agent.access import AccessKey
from shoal.core.digest import Digest, DigestError
from shoal.oci.auth import Credentials
from shoal.oci.distribution import DistributionPath

__all__ = ["ListedSizes"]

TTL = 300.0
"""seconds a listed size is used after its manifest was served (a pull's blobs follow its
manifest within a moment; a stale guess costs only a wasted join)"""
MAX_ENTRIES = 4096


class ListedSizes:
    """(credentials, registry, repository, digest) -> the size a manifest listed, for ``ttl`` s."""

    def __init__(
        self, ttl: float = TTL, max_entries: int = MAX_ENTRIES, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._sizes: OrderedDict[AccessKey, tuple[int, float]] = OrderedDict()

    def note(self, creds: Credentials | None, registry: str, repository: str, manifest: bytes) -> None:
        """Remember the sizes an image manifest lists (its config and layers); anything else
        (an index, not JSON, odd descriptors) is ignored."""
        try:
            doc = json.loads(manifest)
        except ValueError:
            return
        if not isinstance(doc, dict):
            return
        layers = doc.get("layers")
        descriptors = [doc.get("config"), *(layers if isinstance(layers, list) else [])]
        now = self._clock()
        for desc in descriptors:
            if not isinstance(desc, dict):
                continue
            size = desc.get("size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                continue
            try:
                digest = Digest.parse(str(desc.get("digest", "")))
            except DigestError:
                continue
            key = AccessKey.of(creds, registry, repository, digest)
            self._sizes.pop(key, None)
            self._sizes[key] = (size, now)
        while len(self._sizes) > self._max:
            self._sizes.popitem(last=False)

    def size(self, creds: Credentials | None, dist: DistributionPath) -> int | None:
        """The size a manifest these credentials read in this repository listed for the blob,
        if recent; else None."""
        if dist.digest is None:
            return None
        found = self._sizes.get(AccessKey.of(creds, dist.registry, dist.repository, dist.digest))
        if found is None:
            return None
        size, at = found
        return size if self._clock() - at <= self.ttl else None

    def __len__(self) -> int:
        return len(self._sizes)
