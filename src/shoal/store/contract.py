"""The cache as the agent uses it: the one interface the disk store and the memory store share."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from shoal.core.digest import Digest
from shoal.store.partial import PartialBlob


class CacheStore(Protocol):
    """Complete blobs by digest, blobs being written, and manifests.

    ``begin`` a blob (``StoreFullError``/``StoreError`` when it cannot be cached), write it
    into the :class:`PartialBlob`, ``finish`` it, then ``commit``: only then does
    ``blob_path`` name it. ``pin`` keeps a blob from eviction while it is served.
    """

    @property
    def total_size(self) -> int: ...

    @property
    def count(self) -> int: ...

    def blob_path(self, digest: Digest) -> Path | None: ...

    def blob_size(self, digest: Digest) -> int | None: ...

    def pin(self, digest: Digest) -> None: ...

    def unpin(self, digest: Digest) -> None: ...

    def begin(self, digest: Digest, size: int | None) -> PartialBlob: ...

    def reserve(self, partial: PartialBlob, size: int) -> None: ...

    async def commit(self, partial: PartialBlob) -> None: ...

    def get_manifest(self, digest: Digest) -> tuple[bytes, str] | None: ...

    def put_manifest(self, digest: Digest, data: bytes, media_type: str) -> None: ...
