"""A blob source in front of the usual one: what the node's runtime already holds, and, while
the registry cannot answer, what the other agents hold.

    * In containerd's content store: copied from there after the access check (the registry's
      yes, or during an outage a confirmation within the grace); spares the registry.
    * Else the usual source (the swarm, or the registry).
    * That failing because the registry cannot answer: from a peer, if these credentials were
      confirmed for the repository (here or at that peer) and the repository holds the digest;
      401/403 when peers hold it but none saw these credentials confirmed; the registry's
      error (502) only when nobody holds it.

The registry is waited for briefly only while a peer holds the blob for these credentials
(``held_instead``): else as long as a direct pull would wait.

Whatever the source, ``PartialBlob`` checks the bytes against the digest before the blob is
cached or its last byte is sent.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from shoal.agent.blobs import BlobSource
from shoal.agent.cluster_held import ClusterHeld, PeerBlob
from shoal.agent.upstreams import Upstreams, stale_refusal
from shoal.core.digest import Digest
from shoal.oci.auth import Credentials
from shoal.oci.client import UpstreamUnavailable, held_instead
from shoal.oci.distribution import DistributionPath
from shoal.store.blobstore import BlobStore, StoreError
from shoal.store.containerd_content import ContainerdContent
from shoal.store.partial import PartialBlob

log = logging.getLogger(__name__)

CHUNK = 4 << 20


class HeldSource:
    """``BlobSource``: the containerd content store, then ``inner``, then peers in an outage."""

    def __init__(
        self,
        inner: BlobSource,
        upstreams: Upstreams,
        store: BlobStore,
        content: ContainerdContent | None,
        cluster: ClusterHeld | None,
    ) -> None:
        self.inner = inner
        self.upstreams = upstreams
        self.store = store
        self.content = content
        self.cluster = cluster
        self._from_content: set[Digest] = set()
        """blobs last filled from containerd's store: a mismatch there is the store's fault"""

    async def fill(self, partial: PartialBlob, dist: DistributionPath, creds: Credentials | None) -> None:
        digest = dist.digest
        assert digest is not None
        path = self.content.path(digest) if self.content is not None else None
        if path is not None and partial.contiguous == 0:
            await self.upstreams.authorize(creds, dist)
            self._from_content.add(digest)
            try:
                await self._copy(partial, path)
            except OSError as exc:
                raise StoreError(f"cannot read {digest} from containerd's content store: {exc}") from exc
            log.info("%s from containerd's content store", digest)
            return
        stale = self.upstreams.stale
        cluster = self.cluster
        if cluster is None or stale is None or not stale.enabled:
            await self.inner.fill(partial, dist, creds)
            return
        asked: list[PeerBlob | None] = []

        async def in_cluster() -> PeerBlob | None:
            if not asked:
                asked.append(await cluster.blob(creds, dist))
            return asked[0]

        async def held() -> bool:
            found = await in_cluster()
            if found is None:
                return False
            local = stale.may_serve(creds, dist.registry, dist.repository, str(digest))
            return local or found.confirmed_at is not None

        try:
            with held_instead(held):
                await self.inner.fill(partial, dist, creds)
        except UpstreamUnavailable as exc:
            if not stale.may_serve(creds, dist.registry, dist.repository, str(digest)):
                found = await in_cluster()
                if found is None:
                    raise  # nobody holds it: the registry's error
                if found.confirmed_at is None:
                    raise stale_refusal(dist, creds, exc) from None
                stale.adopt(creds, dist.registry, dist.repository, found.confirmed_at, str(digest))
            stale.served("blob", dist.registry, dist.repository, str(digest), str(digest))
            if not await cluster.fill_blob(partial, digest):
                raise
            log.info("%s from a peer: %s cannot answer", digest, dist.registry)

    async def _copy(self, partial: PartialBlob, path: Path) -> None:
        fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if partial.size is None:
                self.store.reserve(partial, size)
                partial.set_size(size)
            pos = 0
            while pos < size:
                chunk = await asyncio.to_thread(os.pread, fd, CHUNK, pos)
                if not chunk:
                    raise OSError(f"{path} ended at {pos} of {size} bytes")
                await partial.write(pos, chunk)
                pos += len(chunk)
        finally:
            os.close(fd)

    async def cached(self, digest: Digest, size: int) -> None:
        self._from_content.discard(digest)
        await self.inner.cached(digest, size)

    def rejected(self, digest: Digest) -> bool:
        """A blob from containerd's store that does not match its digest: the registry may
        still have it right, so it is fetched again from there."""
        if digest in self._from_content:
            self._from_content.discard(digest)
            log.error("%s in containerd's content store does not match its digest", digest)
            return True
        return self.inner.rejected(digest)
