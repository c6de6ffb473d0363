"""Fakes for the swarm's narrow interfaces (``shoal.agent.swarm.ports``): a scheduler that
answers from memory, peer links to parents that hold a blob in memory (honest or lying),
and an origin that writes a blob from memory. No sockets, no processes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Iterable

from shoal.agent.peer_hub import PieceSink
from shoal.agent.peer_link import LinkError, PieceBody
from shoal.agent.piece_buffers import PieceBuffers
from shoal.core.digest import Digest
from shoal.oci.auth import Credentials
from shoal.oci.distribution import DistributionPath
from shoal.p2p.pieces import PieceGeometry
from shoal.p2p.protocol import HashesView, JoinRequest, PeerInfo, Report, TaskView
from shoal.p2p.scheduler_client import SchedulerRejected, SchedulerUnavailable
from shoal.store.partial import PartialBlob


def piece_hashes_of(data: bytes) -> list[str]:
    g = PieceGeometry.of(len(data))
    return [hashlib.sha256(data[o : o + n]).hexdigest() for o, n in (g.span(i) for i in range(g.count))]


class FakeScheduler:
    """One blob's task, in memory: a fixed lease holder and parents; piece hashes as
    published (``hashes``) or as reported by the holder. ``down``: every call fails."""

    def __init__(
        self,
        size: int,
        *,
        fetcher: str | None = None,
        parents: Iterable[str] = (),
        hashes: list[str] | None = None,
        grant_fallback: bool = False,
        down: bool = False,
        fail_joins: int = 0,
        reject_joins: bool = False,
    ) -> None:
        self.geometry = PieceGeometry.of(size)
        self.fetcher = fetcher
        self.parents = [PeerInfo(p, f"{p}:65001", complete=True) for p in parents]
        self.published: dict[int, str] = dict(enumerate(hashes or []))
        self.grant_fallback = grant_fallback
        self.down = down
        self.fail_joins = fail_joins
        """joins that fail (unreachable) before one gets through"""
        self.reject_joins = reject_joins
        self.join_attempts = 0
        self.joins: list[JoinRequest] = []
        self.reports: list[Report] = []
        self.crashes = 0
        """reports that raise an unexpected error (a bug) before they are recorded"""
        self.hash_asks = 0
        """calls of ``hashes``"""
        self._news = asyncio.Event()

    def _view(self, peer_id: str, *, fallback: bool = False) -> TaskView:
        return TaskView(
            role="fetcher" if self.fetcher == peer_id else "peer",
            parents=[p for p in self.parents if p.peer_id != peer_id],
            size=self.geometry.size,
            piece_size=self.geometry.piece_size,
            lease_ttl=15.0,
            fetcher=self.fetcher,
            hashes_known=len(self.published),
            fallback=fallback,
        )

    async def join(self, digest: str, request: JoinRequest) -> TaskView:
        self.join_attempts += 1
        if self.reject_joins:
            raise SchedulerRejected(403, "not this node (fake)")
        if self.down or self.join_attempts <= self.fail_joins:
            raise SchedulerUnavailable("scheduler down (fake)")
        self.joins.append(request)
        return self._view(request.peer_id)

    async def report(self, digest: str, report: Report) -> TaskView:
        if self.down:
            raise SchedulerUnavailable("scheduler down (fake)")
        if self.crashes:
            self.crashes -= 1
            raise RuntimeError("a bug in the scheduler client (fake)")
        self.reports.append(report)
        if report.peer_id == self.fetcher or report.complete:
            for index, sha in report.hashes.items():
                self.publish(index, sha)
        return self._view(report.peer_id, fallback=report.wants_fallback and self.grant_fallback)

    def publish(self, index: int, sha: str) -> None:
        """The lease holder's hash of a piece: wakes the long-polls (the first word stands)."""
        self.published.setdefault(index, sha)
        self._news.set()
        self._news = asyncio.Event()

    def _run_from(self, start: int) -> list[str]:
        run: list[str] = []
        while start + len(run) in self.published:
            run.append(self.published[start + len(run)])
        return run

    async def hashes(self, digest: str, start: int, wait: float = 0.0) -> HashesView:
        """A long-poll: answers when there are hashes from ``start`` on, or after ``wait``."""
        self.hash_asks += 1
        if self.down:
            raise SchedulerUnavailable("scheduler down (fake)")
        if not self._run_from(start) and wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), wait)
        return HashesView(start, self._run_from(start), self.geometry.count)


class FakePeers:
    """Links to parents that hold ``blobs[peer_id]`` whole; ``liars`` send each piece with
    its first byte flipped. Pieces come on the next turn of the loop, as from a link."""

    def __init__(self, blobs: dict[str, bytes], liars: Iterable[str] = ()) -> None:
        self.blobs = blobs
        self.liars = set(liars)
        self.sinks: dict[Digest, PieceSink] = {}
        self.announced: list[int] = []
        self.requests: list[tuple[str, int]] = []
        self.forgotten: list[str] = []
        self.superseeding: set[Digest] = set()
        self.completed: list[tuple[Digest, int]] = []
        self.started = self.closed = False
        self.buffers = PieceBuffers()
        self.bodies: list[PieceBody] = []
        """every body handed to a download, in its pooled buffer, as a link's reader does"""

    def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    def blob_complete(self, digest: Digest, size: int) -> None:
        self.completed.append((digest, size))

    def register(self, digest: Digest, sink: PieceSink) -> None:
        self.sinks[digest] = sink

    def unregister(self, digest: Digest) -> None:
        self.sinks.pop(digest, None)

    async def add_parent(self, digest: Digest, pieces: int, peer_id: str, address: str) -> None:
        if peer_id not in self.blobs:
            raise LinkError(f"cannot reach {peer_id} (fake)")
        sink = self.sinks[digest]
        asyncio.get_running_loop().call_soon(sink.parent_has, peer_id, range(pieces))

    def bytes_from(self, peer_id: str, digest: Digest) -> int:
        return 0

    def request(self, peer_id: str, digest: Digest, index: int) -> bool:
        self.requests.append((peer_id, index))
        data = self.blobs[peer_id]
        offset, length = PieceGeometry.of(len(data)).span(index)
        body = self.buffers.take(length)
        body[:] = data[offset : offset + length]
        if peer_id in self.liars:
            body[0] ^= 0xFF
        piece = PieceBody(str(digest), index, body, hashlib.sha256(body).hexdigest(), self.buffers)
        self.bodies.append(piece)
        sink = self.sinks.get(digest)
        if sink is not None:
            asyncio.get_running_loop().call_soon(sink.piece_arrived, peer_id, piece)
        return True

    def cancel(self, peer_id: str, digest: Digest, index: int) -> None:
        pass

    def forget_parent(self, peer_id: str, digest: Digest) -> None:
        self.forgotten.append(peer_id)

    def announce(self, digest: Digest, indices: Iterable[int]) -> None:
        self.announced.extend(indices)

    def superseed(self, digest: Digest) -> None:
        self.superseeding.add(digest)

    def stop_superseeding(self, digest: Digest) -> None:
        self.superseeding.discard(digest)


class MemoryOrigin:
    """The registry, in memory: writes a blob into a partial file from where it stands, in
    chunks (``delay`` seconds apart). ``wrong``: write other bytes of the same size. Also a
    BlobSource of its own (the plain mirror's)."""

    def __init__(self, blobs: dict[Digest, bytes], *, delay: float = 0.0, chunk: int = 256 << 10) -> None:
        self.blobs = blobs
        self.delay = delay
        self.chunk = chunk
        self.wrong: set[Digest] = set()
        self.fills: list[tuple[Digest, int]] = []
        """(blob, the offset a fill started at)"""

    async def fill(self, partial: PartialBlob, dist: DistributionPath, creds: Credentials | None) -> None:
        assert dist.digest is not None
        data = self.blobs[dist.digest]
        if dist.digest in self.wrong:
            data = bytes(b ^ 0x55 for b in data)
        if partial.size is None:
            partial.set_size(len(data))
        self.fills.append((dist.digest, partial.contiguous))
        pos = partial.contiguous
        while pos < len(data):
            if self.delay:
                await asyncio.sleep(self.delay)
            chunk = data[pos : pos + self.chunk]
            await partial.write(pos, chunk)
            pos += len(chunk)

    async def cached(self, digest: Digest, size: int) -> None:
        pass

    def rejected(self, digest: Digest) -> bool:
        return False
