"""A cache for tests, and the checks every cache must pass.

:class:`MemoryStore` keeps the :class:`~shoal.store.contract.CacheStore` contract with its
books in memory: no eviction, no fsync, no free-space checks, only an optional size cap. The
blobs' bytes live in files all the same, in a private directory on ``/dev/shm`` (memory)
where there is one: the data path works on file descriptors (``sendfile``, ``pread``,
``pwrite``), and :class:`~shoal.store.partial.PartialBlob` is what every writer writes to.
:func:`check_store_conformance` is the contract as a test, run against both stores.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from shoal.core.digest import Digest
from shoal.store.blobstore import StoreFullError
from shoal.store.contract import CacheStore
from shoal.store.partial import DigestMismatchError, PartialBlob

SHM = Path("/dev/shm")


class MemoryStore:
    """A :class:`~shoal.store.contract.CacheStore` for tests (event loop only).

    Parameters:
        max_size: bytes the blobs (committed and reserved) may take; None: no cap.
    """

    def __init__(self, max_size: int | None = None) -> None:
        self.max_size = max_size
        self.root = Path(tempfile.mkdtemp(prefix="shoal-memstore-", dir=SHM if SHM.is_dir() else None))
        self._blobs: dict[Digest, tuple[Path, int]] = {}
        self._manifests: dict[Digest, tuple[bytes, str]] = {}
        self._reserved: dict[Path, int] = {}
        self.pins: dict[Digest, int] = {}
        """blobs being served, and by how many readers"""

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def total_size(self) -> int:
        return sum(size for _, size in self._blobs.values())

    @property
    def count(self) -> int:
        return len(self._blobs) + len(self._manifests)

    def blob_path(self, digest: Digest) -> Path | None:
        entry = self._blobs.get(digest)
        return None if entry is None else entry[0]

    def blob_size(self, digest: Digest) -> int | None:
        entry = self._blobs.get(digest)
        return None if entry is None else entry[1]

    def pin(self, digest: Digest) -> None:
        self.pins[digest] = self.pins.get(digest, 0) + 1

    def unpin(self, digest: Digest) -> None:
        left = self.pins.get(digest, 0) - 1
        if left > 0:
            self.pins[digest] = left
        else:
            self.pins.pop(digest, None)

    def begin(self, digest: Digest, size: int | None) -> PartialBlob:
        self._claim(size or 0)
        path = self.root / f"{digest.hex}.{uuid.uuid4().hex[:8]}"
        partial = PartialBlob(digest, path, size, on_close=self._release)
        self._reserved[path] = size or 0
        return partial

    def reserve(self, partial: PartialBlob, size: int) -> None:
        self._reserved.pop(partial.path, None)
        self._claim(size)
        self._reserved[partial.path] = size

    def _claim(self, size: int) -> None:
        if self.max_size is not None and self.total_size + sum(self._reserved.values()) + size > self.max_size:
            raise StoreFullError(f"no room for {size} bytes: the cap is {self.max_size} bytes")

    def _release(self, partial: PartialBlob) -> None:
        self._reserved.pop(partial.path, None)

    async def commit(self, partial: PartialBlob) -> None:
        assert partial.size is not None
        final = self.root / "blobs" / partial.digest.hex
        final.parent.mkdir(exist_ok=True)
        old = partial.path
        os.replace(old, final)
        partial.path = final
        self._reserved.pop(old, None)
        self._blobs[partial.digest] = (final, partial.size)
        partial.close()

    def get_manifest(self, digest: Digest) -> tuple[bytes, str] | None:
        return self._manifests.get(digest)

    def put_manifest(self, digest: Digest, data: bytes, media_type: str) -> None:
        self._manifests.setdefault(digest, (data, media_type))


async def put_blob(store: CacheStore, data: bytes) -> Digest:
    """Write, verify and commit ``data``; its digest."""
    digest = Digest.of(data)
    partial = store.begin(digest, len(data))
    await partial.write(0, data)
    partial.finish()
    await store.commit(partial)
    return digest


async def check_store_conformance(store: CacheStore) -> None:
    """The contract every cache keeps (raises AssertionError). ``store`` starts empty."""
    _expect((store.count, store.total_size) == (0, 0), "the store starts empty")
    data = os.urandom(3000)
    digest = Digest.of(data)
    _expect(store.blob_path(digest) is None, "an unknown blob has no path")
    _expect(store.blob_size(digest) is None, "an unknown blob has no size")

    # a blob is not there while it is written, and is once committed
    partial = store.begin(digest, None)
    store.reserve(partial, len(data))
    partial.set_size(len(data))
    await partial.write(1000, data[1000:])
    await partial.write(0, data[:1000])
    _expect(store.blob_path(digest) is None, "a blob being written is not cached yet")
    partial.finish()
    await store.commit(partial)
    path = store.blob_path(digest)
    _expect(path is not None and path.read_bytes() == data, "a committed blob's file holds its bytes")
    _expect(store.blob_size(digest) == len(data), "a committed blob has its size")
    _expect((store.count, store.total_size) == (1, len(data)), "a committed blob is counted")

    # a blob that fails its digest leaves nothing behind
    wrong = store.begin(Digest.of(b"other"), 5)
    await wrong.write(0, b"OTHER")
    try:
        wrong.finish()
    except DigestMismatchError:
        pass
    else:
        raise AssertionError("a wrong blob passed its digest")
    _expect(not wrong.path.exists(), "a wrong blob's file is removed")
    _expect(store.blob_path(Digest.of(b"other")) is None, "a wrong blob is not cached")
    _expect(store.count == 1, "a wrong blob is not counted")

    # pins nest; manifests keep their media type
    store.pin(digest)
    store.pin(digest)
    store.unpin(digest)
    store.unpin(digest)
    manifest = b'{"schemaVersion": 2}'
    store.put_manifest(Digest.of(manifest), manifest, "application/vnd.oci.image.manifest.v1+json")
    _expect(
        store.get_manifest(Digest.of(manifest)) == (manifest, "application/vnd.oci.image.manifest.v1+json"),
        "a manifest comes back with its media type",
    )
    _expect(store.get_manifest(Digest.of(b"none")) is None, "an unknown manifest is None")


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(f"store contract broken: {what}")
