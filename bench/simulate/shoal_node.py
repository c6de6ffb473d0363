"""One simulated Shoal agent: the I/O around the real ``DownloadState`` of each of its blobs.

:class:`SimDownload` does, in virtual time, what ``shoal.agent.swarm.SwarmDownload`` does
around the pure state: it joins the task, applies events and carries out the returned
actions. Besides carrying out actions, it performs these swarm duties itself, as
``SwarmDownload`` does today (they are rules kept outside the pure core, and each copy here
must follow the agent's):

1. report timing: report when something happened (a new piece hash, a dropped parent, an
   eighth of the blob more), never more often than ``report_interval`` unless fetching, and
   at least every ``heartbeat`` (``2 x report_interval`` while short of parents);
2. what a report carries: pieces held, the verified prefix, piece hashes not sent yet,
   ``unreported_failures`` (cleared after the report: a mutation outside ``apply``);
3. announcements: a HAVE to every interested child when a piece is written or the prefix
   passes it; the blob complete: announce what children were refused;
4. hash publication: the fetcher's prefix hashes go with its next report, at once;
5. the hashes long-poll from the first unknown piece, fed back as ``HashesKnown``;
6. the clock: a ``Tick`` (or ``BytesArrived``) every second;
7. the fallback ask (a report with ``wants_fallback``), the seed's re-announcement every
   ``seed_announce_interval`` once complete (with all hashes when the scheduler lacks them).

:class:`SimAgent` plays ``PeerHub``'s serving side: the bitfield for an interested child,
HAVEs, requests answered from verified pieces, superseeding while fetching from the origin
(a piece accepted for ``superseed_copies`` children is refused to more).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

from bench.simulate.network import Transfer
from bench.simulate.scheduler import Replicas
from bench.simulate.world import ORIGIN, World
from shoal.p2p import download_state as ds
from shoal.p2p.pieces import piece_count, piece_span
from shoal.p2p.protocol import HashesView, JoinRequest, Report, TaskView

TICK = 1.0
REPORT_INTERVAL = 0.5
HEARTBEAT = 5.0
SEED_ANNOUNCE = 10.0
SUPERSEED_COPIES = 2
DEAD_LINK_NOTICED = 5.0
"""seconds until a link to a dead peer is noticed (the hub's liveness period)"""
CONNECT_REFUSED = 1.0


@dataclass(frozen=True, slots=True)
class Blob:
    digest: str
    size: int
    piece_size: int
    count: int
    hashes: tuple[str, ...]
    """the true sha256 of every piece (the simulated bytes)"""


def make_blob(layer: int, size: int, piece_size: int) -> Blob:
    digest = "sha256:" + hashlib.sha256(f"layer {layer} of {size}".encode()).hexdigest()
    count = piece_count(size, piece_size)
    hashes = tuple(hashlib.sha256(f"{digest}/{i}".encode()).hexdigest() for i in range(count))
    return Blob(digest, size, piece_size, count, hashes)


class Services:
    """What an agent reaches: the world, the other agents, the schedulers (set by the fleet)."""

    world: World
    agents: dict[int, SimAgent]
    peer_ids: dict[str, int]
    scheduler: Replicas


@dataclass(slots=True)
class _Serving:
    """A blob this agent serves: which children were told which pieces."""

    told: dict[int, set[int]] = field(default_factory=dict)
    refused: dict[int, set[int]] = field(default_factory=dict)
    copies: dict[int, int] | None = None
    """superseeding: piece -> children it was accepted for"""


class SimAgent:
    """One node's agent: its downloads and the serving side of its links."""

    def __init__(self, node: int, services: Services, rules: ds.DownloadRules, on_done: Callable[[int], None]) -> None:
        self.node = node
        self.peer_id = f"n{node}"
        self.address = f"10.77.{node // 250}.{node % 250}:65001"
        self.zone = f"zone-{services.world.fleet.zone[node]}"
        self.services = services
        self.rules = rules
        self.avoid: dict[str, float] = {}
        self.downloads: dict[str, SimDownload] = {}
        self.held: dict[str, set[int]] = {}
        """verified pieces of every blob here (complete blobs: all)"""
        self.complete: set[str] = set()
        self.serving: dict[str, _Serving] = {}
        self._on_done = on_done
        self._wanted = 0

    def pull(self, blobs: list[Blob]) -> None:
        self._wanted = len(blobs)
        for blob in blobs:
            download = SimDownload(self, blob)
            self.downloads[blob.digest] = download
            download.start()

    def blob_done(self, blob: Blob) -> None:
        self.complete.add(blob.digest)
        self.held[blob.digest] = set(range(blob.count))
        serving = self.serving.get(blob.digest)
        if serving is not None:
            serving.copies = None
            for child, told in serving.told.items():
                refused = serving.refused.pop(child, set())
                fresh = [i for i in range(blob.count) if i not in told or i in refused]
                told.update(fresh)
                self._have(child, blob.digest, fresh)
        if len(self.complete) == self._wanted:
            self._on_done(self.node)

    # -- serving (PeerHub) -----------------------------------------------------------------
    def interested(self, child: int, digest: str, reply: Callable[[frozenset[int]], None]) -> None:
        pieces = frozenset(self.held.get(digest, ()))
        self.serving.setdefault(digest, _Serving()).told[child] = set(pieces)
        reply(pieces)

    def not_interested(self, child: int, digest: str) -> None:
        serving = self.serving.get(digest)
        if serving is not None:
            serving.told.pop(child, None)
            serving.refused.pop(child, None)

    def announce(self, digest: str, indices: list[int]) -> None:
        """Pieces verified here: one HAVE each to every interested child not told yet."""
        serving = self.serving.get(digest)
        if serving is None:
            return
        for child, told in serving.told.items():
            fresh = [i for i in indices if i not in told]
            if fresh:
                told.update(fresh)
                self._have(child, digest, fresh)

    def _have(self, child: int, digest: str, pieces: list[int]) -> None:
        world = self.services.world
        agent = self.services.agents[child]
        world.message(self.node, child, lambda: agent.parent_has(self.peer_id, digest, pieces))

    def parent_has(self, parent: str, digest: str, pieces: list[int]) -> None:
        """A HAVE arrived. One of pieces the download holds already is dropped here: the state
        could not use it (a holder's pieces count only for pieces still missing), and HAVEs
        are most of a large rollout's events (each piece is announced by every parent)."""
        download = self.downloads.get(digest)
        if download is None or download.state.finished:
            return
        missing = download.state.missing
        wanted = frozenset(i for i in pieces if i in missing)
        if wanted:
            download.apply(ds.ParentHas(parent, wanted))

    def superseed(self, digest: str, on: bool) -> None:
        serving = self.serving.setdefault(digest, _Serving())
        if on:
            serving.copies = serving.copies if serving.copies is not None else {}
            return
        serving.copies = None
        for child, refused in list(serving.refused.items()):
            told = serving.told.get(child)
            if told is None:
                continue
            fresh = sorted(i for i in refused if i in self.held.get(digest, ()) and i not in told)
            told.update(fresh)
            if fresh:
                self._have(child, digest, fresh)
        serving.refused.clear()

    def request(
        self, child: int, blob: Blob, index: int, arrived: Callable[[], None], rejected: Callable[[], None]
    ) -> Transfer | None:
        """A child asks for a piece: send it (a transfer on our link to it), or refuse."""
        digest = blob.digest
        if index not in self.held.get(digest, ()):
            rejected()
            return None
        serving = self.serving.setdefault(digest, _Serving())
        if serving.copies is not None and digest not in self.complete:
            if serving.copies.get(index, 0) >= SUPERSEED_COPIES:
                serving.refused.setdefault(child, set()).add(index)
                told = serving.told.get(child)
                if told is not None:
                    told.discard(index)
                rejected()
                return None
            serving.copies[index] = serving.copies.get(index, 0) + 1
        _, length = piece_span(index, blob.size, blob.piece_size)
        return self.services.world.net.send(self.node, child, length, arrived)


class SimDownload:
    """One blob's download on one agent: the owner of a real ``DownloadState``."""

    def __init__(self, agent: SimAgent, blob: Blob) -> None:
        self.agent = agent
        self.blob = blob
        self.world = agent.services.world
        self.state = ds.DownloadState(
            peer_id=agent.peer_id,
            size=blob.size,
            piece_size=blob.piece_size,
            rules=agent.rules,
            clock=self.world.clock,
            avoided=agent.avoid,
            salt=f"{agent.peer_id}/{blob.digest}",
        )
        self.held = agent.held.setdefault(blob.digest, set())
        self.requests: dict[tuple[str, int], Transfer | None] = {}
        self.origin_transfers: list[Transfer] = []
        self.prefix = 0
        """pieces held in order from 0 (the verified prefix, in pieces)"""
        self.piece_hashes: dict[int, str] = {}
        """hashes this node computed of its prefix while it read the origin (PartialBlob's)"""
        self.hashes_sent: set[int] = set()
        self.written = 0
        self.last_reported_written = 0
        self.last_report = 0.0
        self.report_timer: int | None = None
        self.report_in_flight = False
        self.report_again = False
        self.hash_known = 0
        self.bytes_seen = 0.0
        self.done = False
        self.gave_up = False
        self._ticked = 0.0

    @property
    def dead(self) -> bool:
        return self.agent.node in self.world.dead

    # -- start -----------------------------------------------------------------------------
    def start(self) -> None:
        join = JoinRequest(
            self.agent.peer_id, self.agent.address, self.blob.size, self.blob.piece_size, zone=self.agent.zone
        )
        self._schedulers().join(self.agent.node, self.blob.digest, join, self._joined)

    def _schedulers(self) -> Replicas:
        return self.agent.services.scheduler

    def _joined(self, view: TaskView | None) -> None:
        if view is None:
            self._give_up_now("scheduler: join failed")
            return
        self.last_report = self.world.clock.now
        self.apply(self._answer(view))
        self._tick()
        self._poll_hashes()
        self._schedule_report()

    # -- the owner -------------------------------------------------------------------------
    def apply(self, event: ds.Event) -> None:
        if self.done or self.dead:
            return
        for action in self.state.apply(event):
            self._do(action)

    def _do(self, action: ds.Action) -> None:
        match action:
            case ds.AddParent(parent):
                self._add_parent(parent)
            case ds.RequestPiece(peer_id, index):
                self._request(peer_id, index)
            case ds.CancelRequest(peer_id, index):
                transfer = self.requests.pop((peer_id, index), None)
                if transfer is not None:
                    self.world.net.cancel(transfer)
            case ds.WritePiece(index, peer_id):
                self.requests.pop((peer_id, index), None)
                self._write(index)
            case ds.DiscardPiece(index, _, peer_id, _):
                self.requests.pop((peer_id, index), None)
            case ds.DropParent(peer_id, _, avoid_until):
                parent_node = self.agent.services.peer_ids.get(peer_id)
                if parent_node is not None:
                    self.agent.services.agents[parent_node].not_interested(self.agent.node, self.blob.digest)
                if avoid_until is not None:
                    self.agent.avoid[peer_id] = avoid_until
                self._report_due()
            case ds.StartOriginFetch(offset):
                self._fetch_origin(offset // self.blob.piece_size)
                self.agent.superseed(self.blob.digest, True)
            case ds.StopOriginFetch():
                for t in self.origin_transfers:
                    self.world.net.cancel(t)
                self.origin_transfers = []
                self.agent.superseed(self.blob.digest, False)
            case ds.AskFallback():
                self._report(wants_fallback=True)
            case ds.GiveUp(reason):
                self._give_up_now(reason)
            case ds.Complete():
                self._complete()

    def _answer(self, view: TaskView) -> ds.SchedulerAnswer:
        return ds.SchedulerAnswer(view.fetcher, tuple(ds.ParentInfo(p.peer_id, p.address) for p in view.parents))

    # -- actions ---------------------------------------------------------------------------
    def _add_parent(self, parent: ds.ParentInfo) -> None:
        node = self.agent.services.peer_ids[parent.peer_id]
        me = self.agent.node
        world = self.world
        if node in world.dead:
            world.timers.after(
                CONNECT_REFUSED, lambda: self.apply(ds.ParentLost(parent.peer_id, "refused", unreachable=True))
            )
            return
        other = self.agent.services.agents[node]

        def bitfield(pieces: frozenset[int]) -> None:
            world.message(node, me, lambda: self.apply(ds.ParentHas(parent.peer_id, pieces)))

        world.message(me, node, lambda: other.interested(me, self.blob.digest, bitfield))

    def _request(self, peer_id: str, index: int) -> None:
        node = self.agent.services.peer_ids[peer_id]
        me = self.agent.node
        world = self.world
        key = (peer_id, index)
        self.requests[key] = None
        other = self.agent.services.agents[node]

        def arrived() -> None:
            def deliver() -> None:
                self.bytes_seen += piece_span(index, self.blob.size, self.blob.piece_size)[1]
                self.apply(ds.PieceArrived(peer_id, index, self.blob.hashes[index]))

            world.message(node, me, deliver)

        def rejected() -> None:
            self.requests.pop(key, None)
            world.message(node, me, lambda: self.apply(ds.PieceRejected(peer_id, index)))

        def at_parent() -> None:
            if key not in self.requests:
                return  # cancelled on the way
            transfer = other.request(me, self.blob, index, arrived, rejected)
            if transfer is not None and key in self.requests:
                self.requests[key] = transfer

        world.message(me, node, at_parent)

    def _write(self, index: int) -> None:
        self.held.add(index)
        self.written += 1
        self.apply(ds.PieceWritten(index))
        self._absorb()
        self.agent.announce(self.blob.digest, [index])
        if self.written - self.last_reported_written >= max(1, self.blob.count // 8):
            self._report_due()

    def _absorb(self) -> None:
        while self.prefix < self.blob.count and self.prefix in self.held:
            self.prefix += 1

    def _contiguous(self) -> int:
        return self.blob.size if self.prefix >= self.blob.count else self.prefix * self.blob.piece_size

    def _fetch_origin(self, first: int, *, fallback: bool = False) -> None:
        """Read pieces from the origin in order, from ``first`` (one flow: a GET with a Range)."""
        for index in range(first, self.blob.count):
            if fallback and index in self.held:
                continue
            _, length = piece_span(index, self.blob.size, self.blob.piece_size)
            transfer = self.world.net.send(ORIGIN, self.agent.node, length, partial(self._from_origin, index, fallback))
            self.origin_transfers.append(transfer)

    def _from_origin(self, index: int, fallback: bool) -> None:
        if self.dead:
            return
        self.held.add(index)
        self.bytes_seen += piece_span(index, self.blob.size, self.blob.piece_size)[1]
        if not fallback:
            self.piece_hashes[index] = self.blob.hashes[index]
        self._absorb()
        if fallback:
            if self.prefix >= self.blob.count:
                self._complete_after_fallback()
            return
        self.agent.announce(self.blob.digest, [index])
        self.apply(ds.PrefixAdvanced(self._contiguous()))
        self._report_due()

    def _give_up_now(self, reason: str) -> None:
        """The rest comes from the origin (``SwarmSource.fill`` after ``SwarmGaveUpError``)."""
        self.gave_up = True
        for t in list(self.requests.values()):
            if t is not None:
                self.world.net.cancel(t)
        self.requests.clear()
        for t in self.origin_transfers:
            self.world.net.cancel(t)
        self.origin_transfers = []
        self.agent.superseed(self.blob.digest, False)
        if self.prefix >= self.blob.count:
            self._complete_after_fallback()
            return
        self._fetch_origin(0, fallback=True)

    def _complete_after_fallback(self) -> None:
        self.piece_hashes = dict(enumerate(self.blob.hashes))
        self._complete()

    def _complete(self) -> None:
        if self.done:
            return
        self.done = True
        self.agent.blob_done(self.blob)
        self._announce_seed(with_hashes=self.gave_up)

    # -- reports ---------------------------------------------------------------------------
    def _report_due(self) -> None:
        """Something happened: report now if fetching, else once ``report_interval`` passed."""
        if self.done:
            return
        if self.report_in_flight:
            self.report_again = True
            return
        when = (
            self.world.clock.now
            if self.state.fetching
            else max(self.world.clock.now, self.last_report + REPORT_INTERVAL)
        )
        self._schedule_report(when)

    def _schedule_report(self, when: float | None = None) -> None:
        if when is None:
            wanting = len(self.state.parents) < self.state.rules.max_parents and not self.state.fetching
            when = self.last_report + (2 * REPORT_INTERVAL if wanting else HEARTBEAT)
        if self.report_timer is not None:
            self.world.timers.cancel(self.report_timer)
        self.report_timer = self.world.timers.at(when, self._report)

    def _report(self, wants_fallback: bool = False) -> None:
        if self.done or self.dead:
            return
        if not wants_fallback:
            self.report_timer = None
        new = {i: h for i, h in self.piece_hashes.items() if i not in self.hashes_sent}
        failed = sorted(self.state.unreported_failures)
        report = Report(
            self.agent.peer_id,
            self.agent.address,
            pieces=self.blob.count - len(self.state.missing),
            contiguous=self._contiguous(),
            hashes=new,
            failed_parents=failed,
            size=self.blob.size,
            piece_size=self.blob.piece_size,
            wants_fallback=wants_fallback,
            zone=self.agent.zone,
        )
        self.last_report = self.world.clock.now
        self.last_reported_written = self.written
        self.report_in_flight = True

        def answered(view: TaskView | None) -> None:
            self.report_in_flight = False
            if view is None:
                self.apply(ds.SchedulerFailed())
                if wants_fallback:
                    self.apply(ds.FallbackAnswer(granted=True))
                self._schedule_report(self.world.clock.now + REPORT_INTERVAL)
                return
            self.hashes_sent.update(new)
            self.state.unreported_failures.difference_update(failed)
            self.apply(self._answer(view))
            if wants_fallback:
                self.apply(ds.FallbackAnswer(granted=view.fallback))
            if self.report_again:
                self.report_again = False
                self._report_due()
            elif self.report_timer is None:
                self._schedule_report()

        self._schedulers().report(self.agent.node, self.blob.digest, report, answered)

    def _announce_seed(self, *, with_hashes: bool) -> None:
        """The blob is complete here: tell the scheduler now and every ``SEED_ANNOUNCE``."""
        if self.dead:
            return
        report = Report(
            self.agent.peer_id,
            self.agent.address,
            pieces=self.blob.count,
            contiguous=self.blob.size,
            complete=True,
            size=self.blob.size,
            piece_size=self.blob.piece_size,
            hashes=dict(enumerate(self.blob.hashes)) if with_hashes else {},
            zone=self.agent.zone,
        )

        def answered(view: TaskView | None) -> None:
            if view is not None and view.hashes_known < self.blob.count and not with_hashes:
                # a scheduler without our hashes (a failover): publish them (SwarmSource._announce)
                full = replace(report, hashes=dict(enumerate(self.blob.hashes)))
                self._schedulers().report(self.agent.node, self.blob.digest, full, lambda _: None)

        self._schedulers().report(self.agent.node, self.blob.digest, report, answered)
        self.world.timers.after(SEED_ANNOUNCE, lambda: self._announce_seed(with_hashes=False))

    def _poll_hashes(self) -> None:
        if self.done or self.dead or self.hash_known >= self.blob.count:
            return

        def answered(view: HashesView | None) -> None:
            if view is None:
                self.world.timers.after(REPORT_INTERVAL, self._poll_hashes)
                return
            if view.hashes:
                self.apply(ds.HashesKnown({view.start + i: h for i, h in enumerate(view.hashes)}))
                self.hash_known = max(self.hash_known, view.start + len(view.hashes))
            self._poll_hashes()

        self._schedulers().hashes(self.agent.node, self.blob.digest, self.hash_known, answered)

    def _tick(self) -> None:
        if self.done or self.dead:
            return
        progress = self.bytes_seen + sum(self.world.net.progress(t) for t in self.requests.values() if t is not None)
        if progress > self._ticked:
            self.apply(ds.BytesArrived(int(progress - self._ticked)))
        else:
            self.apply(ds.Tick())
        self._ticked = max(self._ticked, progress)
        self.world.timers.after(TICK, self._tick)
