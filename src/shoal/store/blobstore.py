"""Content-addressed disk cache: ``blobs/sha256/<hex>`` and ``manifests/sha256/<hex>``.

Data is written under ``tmp/``, verified, fsynced, then renamed into place, so a crash never
leaves a wrong blob; whatever sits in ``tmp/`` at start-up is discarded. The index lives in
memory and is rebuilt from the directory on start (the last access time is the file's
mtime), which is what makes ``cacheHostPath`` survive agent restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from shoal.core.digest import Digest
from shoal.store.eviction import CacheEntry, plan_eviction
from shoal.store.partial import PartialBlob

log = logging.getLogger(__name__)

TOUCH_INTERVAL = 60.0
"""Seconds between mtime updates of a hot blob: last access needs no finer grain than this."""


class StoreError(Exception):
    """The cache cannot take a blob (a disk problem, not a content problem)."""


class StoreFullError(StoreError):
    """Not enough room for the blob, even after eviction, or the disk reported ENOSPC."""


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class BlobStore:
    """The cache directory. All methods run on the event loop thread, except those noted."""

    def __init__(
        self,
        root: Path,
        *,
        ttl: float,
        max_size: int | None,
        clock: Callable[[], float] = time.time,
        min_free: int = 64 << 20,
    ) -> None:
        self.root = root
        self.ttl = ttl
        self.max_size = max_size
        self.min_free = min_free
        self._clock = clock
        self._blobs = root / "blobs"
        self._manifests = root / "manifests"
        self._tmp = root / "tmp"
        self._index: dict[str, CacheEntry] = {}
        self._reserved: dict[str, int] = {}
        self._readers: dict[str, int] = {}
        self.evictions: dict[str, int] = {"ttl": 0, "size": 0}
        self.on_evict: Callable[[str], None] | None = None
        """called with the reason ("ttl" or "size") of every eviction (the agent's metrics)"""

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> None:
        for directory in (self._blobs, self._manifests, self._tmp):
            directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        for kind_dir in (self._blobs, self._manifests):
            for algo_dir in kind_dir.iterdir():
                for path in algo_dir.iterdir():
                    if path.suffix == ".type":
                        continue
                    key = self._key_for(kind_dir, f"{algo_dir.name}:{path.name}")
                    try:
                        Digest.parse(f"{algo_dir.name}:{path.name}")
                        st = path.stat()
                    except (ValueError, OSError):
                        log.warning("removing unexpected file %s from the cache", path)
                        path.unlink(missing_ok=True)
                        continue
                    self._index[key] = CacheEntry(st.st_size, st.st_mtime)
        log.info("cache at %s: %d entries, %d bytes", self.root, len(self._index), self.total_size)

    @property
    def total_size(self) -> int:
        return sum(e.size for e in self._index.values())

    @property
    def count(self) -> int:
        return len(self._index)

    def _key_for(self, kind_dir: Path, digest: str) -> str:
        return f"{'m' if kind_dir is self._manifests else 'b'}/{digest}"

    def _path(self, kind_dir: Path, digest: Digest) -> Path:
        return kind_dir / digest.algorithm / digest.hex

    # -- complete blobs ----------------------------------------------------------------------
    def blob_path(self, digest: Digest) -> Path | None:
        """The file of a complete, cached blob (and mark it used), or None."""
        key = f"b/{digest}"
        entry = self._index.get(key)
        if entry is None:
            return None
        path = self._path(self._blobs, digest)
        self._touch(key, path, entry)
        return path

    def blob_size(self, digest: Digest) -> int | None:
        entry = self._index.get(f"b/{digest}")
        return None if entry is None else entry.size

    def _touch(self, key: str, path: Path, entry: CacheEntry) -> None:
        now = self._clock()
        if now - entry.last_access >= TOUCH_INTERVAL:
            with contextlib.suppress(OSError):
                os.utime(path, (now, now))
        self._index[key] = CacheEntry(entry.size, now)

    def pin(self, digest: Digest) -> None:
        """Keep a blob from eviction while it is being served."""
        key = f"b/{digest}"
        self._readers[key] = self._readers.get(key, 0) + 1

    def unpin(self, digest: Digest) -> None:
        key = f"b/{digest}"
        left = self._readers.get(key, 0) - 1
        if left > 0:
            self._readers[key] = left
        else:
            self._readers.pop(key, None)

    # -- writing -----------------------------------------------------------------------------
    def begin(self, digest: Digest, size: int | None) -> PartialBlob:
        """Start writing a blob. Raises StoreFullError when it cannot be cached."""
        need = size or 0
        self.make_room(need)
        try:
            free = shutil.disk_usage(self.root).free
        except OSError as exc:
            raise StoreError(f"cache directory unusable: {exc}") from exc
        if free < need + self.min_free:
            raise StoreFullError(f"not enough disk for {digest}: {free} bytes free, need {need + self.min_free}")
        path = self._tmp / f"{digest.hex}.{uuid.uuid4().hex[:8]}"
        try:
            partial = PartialBlob(digest, path, size, on_close=self._release)
        except OSError as exc:
            if is_disk_full(exc):
                raise StoreFullError(str(exc)) from exc
            raise StoreError(f"cannot create {path}: {exc}") from exc
        self._reserved[str(path)] = need
        return partial

    def reserve(self, partial: PartialBlob, size: int) -> None:
        """Claim room for a blob whose size became known after ``begin``."""
        key = str(partial.path)
        self._reserved.pop(key, None)
        try:
            self.make_room(size)
            free = shutil.disk_usage(self.root).free
        except OSError as exc:
            raise StoreError(f"cache directory unusable: {exc}") from exc
        if free < size - partial.contiguous + self.min_free:
            raise StoreFullError(f"not enough disk for {partial.digest}: {free} bytes free")
        self._reserved[key] = size

    def _release(self, partial: PartialBlob) -> None:
        self._reserved.pop(str(partial.path), None)

    async def commit(self, partial: PartialBlob) -> None:
        """Fsync a verified partial blob and rename it into the cache."""
        await asyncio.to_thread(partial.fsync)
        final = self._path(self._blobs, partial.digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        old = partial.path
        os.replace(old, final)
        partial.path = final
        self._reserved.pop(str(old), None)
        assert partial.size is not None
        now = self._clock()
        os.utime(final, (now, now))
        self._index[f"b/{partial.digest}"] = CacheEntry(partial.size, now)
        partial.close()

    def make_room(self, incoming: int) -> None:
        """Evict expired entries and, with a size cap, the least recently used ones."""
        reserved = sum(self._reserved.values())
        if self.max_size is not None and incoming + reserved > self.max_size:
            raise StoreFullError(f"blob of {incoming} bytes does not fit the cache cap of {self.max_size} bytes")
        plan = plan_eviction(
            self._index,
            now=self._clock(),
            ttl=self.ttl,
            max_size=self.max_size,
            incoming=incoming + reserved,
            pinned=set(self._readers),
        )
        for key in plan.expired:
            self._evict(key, "ttl")
        for key in plan.over_size:
            self._evict(key, "size")
        if self.max_size is not None and self.total_size + reserved + incoming > self.max_size:
            raise StoreFullError(f"no room for {incoming} bytes: cache is full of blobs in use")

    def evict_expired(self) -> int:
        plan = plan_eviction(self._index, now=self._clock(), ttl=self.ttl, max_size=None, pinned=set(self._readers))
        for key in plan.expired:
            self._evict(key, "ttl")
        return len(plan.expired)

    def _evict(self, key: str, reason: str) -> None:
        kind, _, digest_text = key.partition("/")
        digest = Digest.parse(digest_text)
        kind_dir = self._manifests if kind == "m" else self._blobs
        path = self._path(kind_dir, digest)
        path.unlink(missing_ok=True)
        path.with_suffix(".type").unlink(missing_ok=True)
        self._index.pop(key, None)
        self.evictions[reason] += 1
        if self.on_evict is not None:
            self.on_evict(reason)
        log.info("evicted %s (%s)", digest_text, reason)

    # -- manifests ---------------------------------------------------------------------------
    def get_manifest(self, digest: Digest) -> tuple[bytes, str] | None:
        key = f"m/{digest}"
        entry = self._index.get(key)
        if entry is None:
            return None
        path = self._path(self._manifests, digest)
        try:
            data = path.read_bytes()
            media_type = path.with_suffix(".type").read_text().strip()
        except OSError:
            self._index.pop(key, None)
            return None
        self._touch(key, path, entry)
        return data, media_type

    def put_manifest(self, digest: Digest, data: bytes, media_type: str) -> None:
        """Store a verified manifest; a full disk only means it is not cached."""
        key = f"m/{digest}"
        if key in self._index:
            return
        path = self._path(self._manifests, digest)
        tmp = self._tmp / f"m-{digest.hex}.{uuid.uuid4().hex[:8]}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(media_type)
            os.replace(tmp, path.with_suffix(".type"))
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.warning("manifest %s not cached: %s", digest, exc)
            return
        self._index[key] = CacheEntry(len(data), self._clock())
