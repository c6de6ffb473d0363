"""BlobStore: write, verify, commit; TTL and LRU eviction on an injected clock; restarts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shoal.core.digest import Digest
from shoal.store.blobstore import BlobStore, StoreFullError
from shoal.store.partial import DigestMismatchError

T0 = 1_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def blob(n: int, size: int = 40) -> bytes:
    return bytes([n]) * size


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


async def put(store: BlobStore, data: bytes, *, known_size: bool = True) -> Digest:
    digest = Digest.of(data)
    partial = store.begin(digest, len(data) if known_size else None)
    if not known_size:
        store.reserve(partial, len(data))
        partial.set_size(len(data))
    await partial.write(0, data)
    partial.finish()
    await store.commit(partial)
    return digest


def new_store(root: Path, clock: Clock, *, ttl: float = 3600.0, max_size: int | None = None) -> BlobStore:
    store = BlobStore(root, ttl=ttl, max_size=max_size, clock=clock, min_free=0)
    store.open()
    return store


class TestWriteAndCommit:
    """A committed blob is a file under blobs/<algo>/<hex>; nothing stays in tmp/."""

    async def test_commit(self, tmp_path: Path) -> None:
        store = new_store(tmp_path, Clock())
        digest = await put(store, b"hello world")
        path = store.blob_path(digest)
        assert path == tmp_path / "blobs" / "sha256" / digest.hex
        assert path.read_bytes() == b"hello world"
        assert store.blob_size(digest) == 11
        assert (store.count, store.total_size) == (1, 11)
        assert files_under(tmp_path / "tmp") == []

    async def test_size_learned_after_begin(self, tmp_path: Path) -> None:
        store = new_store(tmp_path, Clock())
        digest = await put(store, b"late size", known_size=False)
        assert store.blob_size(digest) == 9

    async def test_mismatch_leaves_nothing(self, tmp_path: Path) -> None:
        store = new_store(tmp_path, Clock(), max_size=100)
        partial = store.begin(Digest.of(blob(1, 80)), 80)
        await partial.write(0, blob(2, 80))
        with pytest.raises(DigestMismatchError):
            partial.finish()
        assert files_under(tmp_path) == []
        assert store.blob_path(Digest.of(blob(1, 80))) is None
        # the failed blob's reservation is released: another 80 bytes fit under the cap of 100
        await put(store, blob(3, 80))

    async def test_open_discards_tmp_and_strays(self, tmp_path: Path) -> None:
        (tmp_path / "tmp").mkdir(parents=True)
        (tmp_path / "tmp" / "leftover.1234").write_bytes(b"half a blob")
        stray = tmp_path / "blobs" / "sha256" / "not-a-digest"
        stray.parent.mkdir(parents=True)
        stray.write_bytes(b"?")
        store = new_store(tmp_path, Clock())
        assert files_under(tmp_path) == []
        assert store.count == 0


class TestRestart:
    """The index is rebuilt from the directory; the file's mtime is the last access."""

    async def test_rescan(self, tmp_path: Path) -> None:
        clock = Clock()
        store = new_store(tmp_path, clock)
        a = await put(store, blob(1))
        manifest = b'{"schemaVersion": 2}'
        store.put_manifest(Digest.of(manifest), manifest, "application/vnd.oci.image.manifest.v1+json")
        again = new_store(tmp_path, clock)
        assert again.blob_path(a) is not None
        assert again.blob_size(a) == 40
        assert again.get_manifest(Digest.of(manifest)) == (manifest, "application/vnd.oci.image.manifest.v1+json")
        assert again.count == 2

    async def test_ttl_counts_from_before_the_restart(self, tmp_path: Path) -> None:
        clock = Clock()
        store = new_store(tmp_path, clock, ttl=100.0)
        a = await put(store, blob(1))
        clock.now += 60
        b = await put(store, blob(2))
        assert os.stat(tmp_path / "blobs" / "sha256" / a.hex).st_mtime == T0
        clock.now += 60  # a: 120 s old, b: 60 s
        again = new_store(tmp_path, clock, ttl=100.0)
        assert again.evict_expired() == 1
        assert again.blob_path(a) is None
        assert again.blob_path(b) is not None
        assert not (tmp_path / "blobs" / "sha256" / a.hex).exists()


class TestEviction:
    """TTL by last access, then LRU to the size cap; blobs being read are never evicted."""

    async def test_ttl(self, tmp_path: Path) -> None:
        clock = Clock()
        store = new_store(tmp_path, clock, ttl=100.0)
        a = await put(store, blob(1))
        b = await put(store, blob(2))
        clock.now += 90
        assert store.blob_path(b) is not None  # a read refreshes b
        clock.now += 20
        assert store.evict_expired() == 1
        assert store.blob_path(a) is None
        assert store.blob_path(b) is not None
        assert store.evictions == {"ttl": 1, "size": 0}

    async def test_lru_cap(self, tmp_path: Path) -> None:
        clock = Clock()
        store = new_store(tmp_path, clock, max_size=100)
        reasons: list[str] = []
        store.on_evict = reasons.append
        a = await put(store, blob(1))
        clock.now += 1
        b = await put(store, blob(2))
        clock.now += 1
        assert store.blob_path(a) is not None  # a is now more recent than b
        clock.now += 1
        c = await put(store, blob(3))
        assert store.blob_path(b) is None
        assert store.blob_path(a) is not None
        assert store.blob_path(c) is not None
        assert store.total_size == 80
        assert store.evictions == {"ttl": 0, "size": 1}
        assert reasons == ["size"]
        assert sorted(p.name for p in files_under(tmp_path / "blobs")) == sorted([a.hex, c.hex])

    async def test_pinned_blob_survives(self, tmp_path: Path) -> None:
        clock = Clock()
        store = new_store(tmp_path, clock, max_size=100)
        reasons: list[str] = []
        store.on_evict = reasons.append
        a = await put(store, blob(1))
        clock.now += 1
        b = await put(store, blob(2))
        store.pin(a)
        clock.now += 1
        await put(store, blob(3))
        assert store.blob_path(a) is not None
        assert store.blob_path(b) is None
        store.unpin(a)

    async def test_full_of_pinned_blobs(self, tmp_path: Path) -> None:
        store = new_store(tmp_path, Clock(), max_size=100)
        a = await put(store, blob(1, 60))
        store.pin(a)
        with pytest.raises(StoreFullError):
            store.begin(Digest.of(blob(2, 60)), 60)
        assert store.blob_path(a) is not None
        assert files_under(tmp_path / "tmp") == []

    async def test_bigger_than_the_cap(self, tmp_path: Path) -> None:
        store = new_store(tmp_path, Clock(), max_size=100)
        a = await put(store, blob(1))
        with pytest.raises(StoreFullError):
            store.begin(Digest.of(blob(2, 101)), 101)
        assert store.blob_path(a) is not None  # nothing evicted for a blob that cannot fit

    async def test_reservations_count(self, tmp_path: Path) -> None:
        store = new_store(tmp_path, Clock(), max_size=100)
        first = store.begin(Digest.of(blob(1, 60)), 60)
        with pytest.raises(StoreFullError):
            store.begin(Digest.of(blob(2, 60)), 60)  # 60 are promised to the first download
        first.fail(ConnectionError("gone"))
        second = store.begin(Digest.of(blob(2, 60)), 60)
        second.close()
        second.path.unlink()

    async def test_min_free(self, tmp_path: Path) -> None:
        store = BlobStore(tmp_path, ttl=60.0, max_size=None, min_free=1 << 62)
        store.open()
        with pytest.raises(StoreFullError, match="not enough disk"):
            store.begin(Digest.of(b"x"), 1)
