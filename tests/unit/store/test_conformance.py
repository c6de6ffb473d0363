"""The disk store and the memory store keep one contract (``check_store_conformance``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.core.digest import Digest
from shoal.store.blobstore import BlobStore, StoreFullError
from shoal.store.contract import CacheStore
from shoal.store.testing import MemoryStore, check_store_conformance, put_blob


@pytest.fixture
def memory() -> Iterator[MemoryStore]:
    store = MemoryStore()
    yield store
    store.close()


class TestConformance:
    """Both stores pass the same checks."""

    async def test_disk_store(self, tmp_path: Path) -> None:
        store = BlobStore(tmp_path, ttl=3600.0, max_size=None, min_free=0)
        store.open()
        await check_store_conformance(store)

    async def test_memory_store(self, memory: MemoryStore) -> None:
        await check_store_conformance(memory)


class TestMemoryStore:
    """What the memory store adds: a cap, and a directory that goes away."""

    async def test_the_cap_counts_committed_and_reserved_bytes(self) -> None:
        store = MemoryStore(max_size=100)
        try:
            await put_blob(store, b"x" * 60)
            held: CacheStore = store
            partial = held.begin(Digest.of(b"y" * 30), 30)
            with pytest.raises(StoreFullError, match="cap"):
                store.begin(Digest.of(b"z" * 20), 20)
            partial.fail(RuntimeError("dropped"))
            await put_blob(store, b"z" * 20)  # the failed blob's room is free again
        finally:
            store.close()
        assert not store.root.exists()
