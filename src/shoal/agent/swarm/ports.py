"""What a download needs of the rest of the agent: narrow interfaces, injected.

A :class:`~shoal.agent.swarm.download.SwarmDownload` never reaches back into the source that
made it: it gets these, and unit tests give it fakes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from shoal.agent.peer_hub import PieceSink
from shoal.core.digest import Digest
from shoal.oci.auth import Credentials
from shoal.oci.distribution import DistributionPath
from shoal.p2p.protocol import HashesView, JoinRequest, Report, TaskView
from shoal.store.partial import PartialBlob


class SchedulerPort(Protocol):
    """The scheduler API (:class:`~shoal.p2p.scheduler_client.SchedulerClient`); every call
    raises ``SchedulerUnavailable`` when no scheduler answers."""

    async def join(self, digest: str, request: JoinRequest) -> TaskView: ...

    async def report(self, digest: str, report: Report) -> TaskView: ...

    async def hashes(self, digest: str, start: int, wait: float = 0.0) -> HashesView: ...


class PeerPort(Protocol):
    """The peer links as one download uses them (:class:`~shoal.agent.peer_hub.PeerHub`)."""

    def register(self, digest: Digest, sink: PieceSink) -> None: ...

    def unregister(self, digest: Digest) -> None: ...

    async def add_parent(self, digest: Digest, pieces: int, peer_id: str, address: str) -> None: ...

    def bytes_from(self, peer_id: str, digest: Digest) -> int: ...

    def request(self, peer_id: str, digest: Digest, index: int) -> bool: ...

    def cancel(self, peer_id: str, digest: Digest, index: int) -> None: ...

    def forget_parent(self, peer_id: str, digest: Digest) -> None: ...

    def announce(self, digest: Digest, indices: Iterable[int]) -> None: ...

    def superseed(self, digest: Digest) -> None: ...

    def stop_superseeding(self, digest: Digest) -> None: ...


class OriginFill(Protocol):
    """The registry, for the origin fetch (:class:`~shoal.agent.origin.OriginSource`)."""

    async def fill(self, partial: PartialBlob, dist: DistributionPath, creds: Credentials | None) -> None: ...


class AvoidList:
    """Peers that sent corrupt data, and until when (monotonic seconds) no download uses
    them. One per agent; downloads read ``until`` and add through :meth:`avoid`."""

    def __init__(self) -> None:
        self.until: dict[str, float] = {}

    def avoid(self, peer_id: str, until: float) -> None:
        self.until[peer_id] = max(until, self.until.get(peer_id, 0.0))


class HubPort(PeerPort, Protocol):
    """The peer hub as the swarm source uses it: a download's calls, plus its lifetime and
    the news that a blob is complete here."""

    def start(self) -> None: ...

    async def close(self) -> None: ...

    def blob_complete(self, digest: Digest, size: int) -> None: ...


class SizeLookup(Protocol):
    """The registry's size of a blob, which also proves the credentials may read it
    (:meth:`~shoal.agent.upstreams.Upstreams.blob_size`)."""

    async def blob_size(self, creds: Credentials | None, dist: DistributionPath) -> int | None: ...


class SeedStore(Protocol):
    """The cache as the swarm source uses it (:class:`~shoal.store.blobstore.BlobStore`)."""

    def reserve(self, partial: PartialBlob, size: int) -> None: ...

    def blob_path(self, digest: Digest) -> Path | None: ...

    def blob_size(self, digest: Digest) -> int | None: ...
