"""One simulated Shoal agent: the I/O around the real cores of each of its blobs, in virtual time.

:class:`SimDownload` does what ``shoal.agent.swarm.download.SwarmDownload`` does around the
pure ``DownloadState``: it joins the task, applies events, carries out the returned actions
and applies ``ReportDue`` at ``state.wake_at()``. Every swarm rule (report timing and
content, announcements, hash publication, the fallback ask and its retries, holding a
fallback lease) comes from the state's actions; the adapter sends what they say and feeds
back what happened. Like ``SwarmDownload``, it also runs the I/O loops around the state:
the hashes long-poll (``HashesKnown``, pausing as ``hash_ask_pause`` says), a tick a second
(``Tick`` or ``BytesArrived``), and the partial file's watch (``PiecesHashed`` then
``PrefixAdvanced``).

:class:`SimAgent` plays ``SwarmSource``: the join retries, the origin fill after ``GiveUp``
(holding a granted fallback lease meanwhile, as ``keep_fallback`` does), and the seeding
announcements of the pure ``shoal.agent.swarm.seeds.SeedBook``; its serving side (``PeerHub``'s)
carries out the pure ``shoal.p2p.serving.ServingBook``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

from bench.simulate.network import Transfer
from bench.simulate.scheduler import Replicas
from bench.simulate.world import ORIGIN, World
from shoal.agent.swarm.config import SwarmConfig
from shoal.agent.swarm.download import TICK, join_pause
from shoal.agent.swarm.fetches import NodeFetches
from shoal.agent.swarm.seeds import Announcement, SeedBook
from shoal.core.digest import Digest
from shoal.p2p import download_state as ds
from shoal.p2p.download_state.scheduler_messages import answer_event, report_message
from shoal.p2p.pieces import PieceGeometry
from shoal.p2p.protocol import HashesView, JoinRequest, Report, TaskView
from shoal.p2p.serving import Haves, ServingBook

AGENT = SwarmConfig(peer_id="", address="", token=None)
"""the agent's defaults for what lies outside the download rules (seeding, superseeding)"""
DEAD_LINK_NOTICED = 5.0
"""seconds until a link to a dead peer is noticed (the hub's liveness period)"""
CONNECT_REFUSED = 1.0


@dataclass(frozen=True, slots=True)
class Blob:
    digest: str
    geometry: PieceGeometry
    hashes: tuple[str, ...]
    """the true sha256 of every piece (the simulated bytes)"""

    @property
    def count(self) -> int:
        return self.geometry.count


def make_blob(layer: int, size: int, piece_size: int) -> Blob:
    digest = "sha256:" + hashlib.sha256(f"layer {layer} of {size}".encode()).hexdigest()
    geometry = PieceGeometry(size, piece_size)
    hashes = tuple(hashlib.sha256(f"{digest}/{i}".encode()).hexdigest() for i in range(geometry.count))
    return Blob(digest, geometry, hashes)


class Services:
    """What an agent reaches: the world, the other agents, the schedulers (set by the fleet)."""

    world: World
    agents: dict[int, SimAgent]
    peer_ids: dict[str, int]
    scheduler: Replicas


class SimAgent:
    """One node's agent: its downloads, its seeding announcements and the serving side of its links."""

    def __init__(self, node: int, services: Services, rules: ds.DownloadRules, on_done: Callable[[int], None]) -> None:
        self.node = node
        self.peer_id = f"n{node}"
        self.address = f"10.77.{node // 250}.{node % 250}:65001"
        self.zone = f"zone-{services.world.fleet.zone[node]}"
        self.services = services
        self.world = services.world
        self.rules = rules
        self.avoid: dict[str, float] = {}
        self.downloads: dict[str, SimDownload] = {}
        self.held: dict[str, set[int]] = {}
        """verified pieces of every blob here (complete blobs: all)"""
        self.complete: set[str] = set()
        self.serving = ServingBook(superseed_copies=AGENT.superseed_copies)
        self.seeds = SeedBook(me=self.peer_id, max_seeding=AGENT.max_seeding, avoid_for=rules.avoid_corrupt_for)
        self.fetches = NodeFetches()
        """``SwarmSource.fetches``: which downloads fetch from the origin"""
        self._blobs: dict[str, Blob] = {}
        self._on_done = on_done
        self._wanted = 0

    @property
    def dead(self) -> bool:
        return self.node in self.world.dead

    def pull(self, blobs: list[Blob]) -> None:
        self._wanted = len(blobs)
        self.world.timers.after(AGENT.seed_announce_interval, self._announce_seeds)
        for blob in blobs:
            self._blobs[blob.digest] = blob
            download = SimDownload(self, blob)
            self.downloads[blob.digest] = download
            download.start()

    def blob_done(self, blob: Blob) -> None:
        """The blob is complete and verified (``SwarmSource.cached``)."""
        self.complete.add(blob.digest)
        self.held[blob.digest] = set(range(blob.count))
        self.send_haves(blob.digest, self.serving.blob_complete(blob.digest, blob.count))
        self._announce(self.seeds.cached(Digest.parse(blob.digest), blob.geometry))
        if len(self.complete) == self._wanted:
            self._on_done(self.node)

    # -- seeding (SwarmSource and SeedBook) ---------------------------------------------------
    def report(self, digest: str, report: Report, answer: Callable[[TaskView | None], None]) -> None:
        self.services.scheduler.report(self.node, digest, replace(report, zone=self.zone), answer)

    def _announce(self, announcement: Announcement) -> None:
        digest, geometry = str(announcement.digest), announcement.geometry
        blob = self._blobs[digest]
        report = Report(
            self.peer_id,
            self.address,
            pieces=geometry.count,
            contiguous=geometry.size,
            complete=True,
            size=geometry.size,
            piece_size=geometry.piece_size,
            hashes=dict(enumerate(blob.hashes)) if announcement.with_hashes else {},
        )

        def answered(view: TaskView | None) -> None:
            if view is not None and announcement.needs_hashes(view.hashes_known):
                self.report(digest, replace(report, hashes=dict(enumerate(blob.hashes))), lambda _: None)

        self.report(digest, report, answered)

    def _announce_seeds(self) -> None:
        if self.dead:
            return
        for announcement in self.seeds.due(lambda d: str(d) in self.complete):
            self._announce(announcement)
        self.world.timers.after(AGENT.seed_announce_interval, self._announce_seeds)

    # -- serving (PeerHub) ----------------------------------------------------------------------
    def send_haves(self, digest: str, haves: Haves) -> None:
        for child, pieces in haves:
            assert isinstance(child, int)
            agent = self.services.agents[child]
            self.world.message(self.node, child, partial(agent.parent_has, self.peer_id, digest, pieces))

    def interested(self, child: int, digest: str) -> frozenset[int]:
        return self.serving.interested(child, digest, self.held.get(digest, ()))

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

    def request(
        self, child: int, blob: Blob, index: int, arrived: Callable[[], None], rejected: Callable[[], None]
    ) -> Transfer | None:
        """A child asks for a piece: send it (a transfer on our link to it), or refuse."""
        if not self.serving.accept(child, blob.digest, index, held=index in self.held.get(blob.digest, ())):
            rejected()
            return None
        return self.world.net.send(self.node, child, blob.geometry.length(index), arrived)


class SimDownload:
    """One blob's download on one agent: the owner of a real ``DownloadState``."""

    def __init__(self, agent: SimAgent, blob: Blob) -> None:
        self.agent = agent
        self.blob = blob
        self.digest = blob.digest
        self.world = agent.world
        self.state = ds.DownloadState(
            peer_id=agent.peer_id,
            geometry=blob.geometry,
            rules=agent.rules,
            clock=self.world.clock,
            avoided=agent.avoid,
            salt=f"{agent.peer_id}/{blob.digest}",
        )
        self.held = agent.held.setdefault(blob.digest, set())
        self.requests: dict[tuple[str, int], Transfer | None] = {}
        self.origin_transfers: list[Transfer] = []
        self.prefix = 0
        """pieces held in order from 0 (the partial file's verified prefix, in pieces)"""
        self.hashing = False
        """the partial file hashes pieces as its prefix grows (set by our origin fetch)"""
        self.piece_hashes: dict[int, str] = {}
        """hashes of the prefix (``PartialBlob.piece_hashes``)"""
        self.hash_known = 0
        self._hash_pause: int | None = None
        """the timer of a pause between two asks for hashes (``ds.hash_ask_pause``)"""
        self.bytes_seen = 0.0
        """bytes of pieces received from parents"""
        self.wasted = 0.0
        """bytes received from a parent dropped meanwhile (thrown away, as the agent does)"""
        self.reports_sent = 0
        """``SendReport`` actions carried out (the final one included)"""
        self.done = False
        self.swarm_over = False
        """the swarm part is over (complete, or gave up: the origin fills the rest)"""
        self._wake: int | None = None
        self._wake_at: float | None = None
        self._ticked = 0.0

    @property
    def dead(self) -> bool:
        return self.agent.node in self.world.dead

    # -- start -----------------------------------------------------------------------------
    def start(self, attempt: int = 0, first: float | None = None) -> None:
        """Join the task; a failed join is tried again (``SwarmDownload._join``)."""
        started = self.world.clock() if first is None else first
        geometry = self.blob.geometry
        join = JoinRequest(
            self.agent.peer_id, self.agent.address, geometry.size, geometry.piece_size, zone=self.agent.zone
        )

        def answered(view: TaskView | None) -> None:
            if view is not None:
                self._joined(view)
                return
            draw = random.Random(f"join/{self.agent.peer_id}/{self.digest}/{attempt}").random()
            pause = join_pause(attempt + 1, self.world.clock() - started, draw)
            if pause is None:
                self._give_up(ds.GiveUp("scheduler: join failed"))
            else:
                self.world.timers.after(pause, lambda: self.start(attempt + 1, started))

        self.agent.services.scheduler.join(self.agent.node, self.digest, join, answered)

    def _joined(self, view: TaskView) -> None:
        self.agent.fetches.join(self, self._post)
        self.apply(answer_event(view))
        self._tick()
        self._poll_hashes()

    # -- the owner -------------------------------------------------------------------------
    def _post(self, event: ds.Event) -> None:
        """An event from outside the download (the agent's queue): applied after this step."""
        self.world.timers.after(0.0, partial(self.apply, event))

    def apply(self, event: ds.Event) -> None:
        if self.swarm_over or self.dead:
            return
        for action in self.state.apply(event):
            self._do(action)
        self._schedule_wake()
        if self._hash_pause is not None and self.state.awaiting_hash:
            # a piece waits for its hash: the pause ends (SwarmDownload._hash_wanted)
            self.world.timers.cancel(self._hash_pause)
            self._hash_pause = None
            self.world.timers.after(0.0, self._poll_hashes)

    def _do(self, action: ds.Action) -> None:
        match action:
            case ds.AddParent(parent):
                self._add_parent(parent)
            case ds.RequestPiece(peer_id, index):
                self._request(peer_id, index)
            case ds.CancelRequest(peer_id, index):
                self._cancel(peer_id, index)
            case ds.WritePiece(index, peer_id):
                self.requests.pop((peer_id, index), None)
                self._write(index)
            case ds.DiscardPiece(index, _, peer_id, _):
                self.requests.pop((peer_id, index), None)
            case ds.DropParent(peer_id, _, avoid_until):
                parent_node = self.agent.services.peer_ids.get(peer_id)
                if parent_node is not None:
                    self.agent.services.agents[parent_node].serving.not_interested(self.agent.node, self.digest)
                if avoid_until is not None:
                    self.agent.avoid[peer_id] = max(avoid_until, self.agent.avoid.get(peer_id, 0.0))
            case ds.AnnouncePieces(indices):
                self.agent.send_haves(self.digest, self.agent.serving.announce(self.digest, indices))
            case ds.SendReport():
                self._send_report(action)
            case ds.StartOriginFetch(offset):
                self.hashing = self.hashing or offset % self.blob.geometry.piece_size == 0
                self._fetch_origin(self.blob.geometry.pieces_within(offset))
                self.agent.fetches.started(self)
                self.agent.serving.superseed(self.digest)
            case ds.StopOriginFetch():
                self._stop_origin()
                haves = self.agent.serving.stop_superseeding(self.digest, self.held.__contains__)
                self.agent.send_haves(self.digest, haves)
            case ds.AskFallback():
                pass  # the ask goes as the next SendReport
            case ds.GiveUp():
                self._give_up(action)
            case ds.Complete():
                # a final SendReport (the fetcher's last hashes) went out just before
                self._end_swarm()
                self._complete()

    def _schedule_wake(self) -> None:
        """Have ``ReportDue`` applied when the state asks for it."""
        at = self.state.wake_at()
        if at == self._wake_at:
            return
        timers = self.world.timers
        if self._wake is not None:
            timers.cancel(self._wake)
            self._wake = None
        self._wake_at = at
        if at is not None:
            self._wake = timers.at(at, self._ring)

    def _ring(self) -> None:
        self._wake, self._wake_at = None, None
        if self.swarm_over:
            self._keep_fallback()
        else:
            self.apply(ds.ReportDue())

    # -- reports ---------------------------------------------------------------------------
    def _send_report(self, action: ds.SendReport) -> None:
        """Carry out a ``SendReport``; its answer (or failure) goes back to the state."""
        self.reports_sent += 1
        report = report_message(action, self.agent.peer_id, self.agent.address, self.blob.geometry)
        if action.final:
            self.agent.report(self.digest, report, lambda _: None)  # its answer is not applied
            return

        def answered(view: TaskView | None) -> None:
            events: list[ds.Event] = [ds.SchedulerFailed()]
            if view is not None:
                events = [answer_event(view)]
                if action.wants_fallback:
                    events.append(ds.FallbackAnswer(granted=view.fallback))
            for event in events:
                if self.swarm_over:
                    self._apply_after(event)
                else:
                    self.apply(event)

        self.agent.report(self.digest, report, answered)

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

        def interested() -> None:
            pieces = other.interested(me, self.digest)
            world.message(node, me, lambda: self.apply(ds.ParentHas(parent.peer_id, pieces)))

        world.message(me, node, interested)

    def _request(self, peer_id: str, index: int) -> None:
        node = self.agent.services.peer_ids[peer_id]
        me = self.agent.node
        world = self.world
        key = (peer_id, index)
        self.requests[key] = None
        other = self.agent.services.agents[node]

        def arrived() -> None:
            def deliver() -> None:
                self.bytes_seen += self.blob.geometry.length(index)
                if peer_id not in self.state.parents:
                    # the agent forgot this parent's connection: what it still sent is lost
                    self.wasted += self.blob.geometry.length(index)
                    return
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

    def _cancel(self, peer_id: str, index: int) -> None:
        transfer = self.requests.pop((peer_id, index), None)
        if transfer is None:
            return
        if self.world.net.progress(transfer) == 0:
            node = self.agent.services.peer_ids[peer_id]
            self.agent.services.agents[node].serving.dropped(self.agent.node, self.digest, index)
        self.world.net.cancel(transfer)

    def _write(self, index: int) -> None:
        """The piece is on file: the partial file's news first, then the write's (as the agent)."""
        self.held.add(index)
        self._observe_partial()
        self.apply(ds.PieceWritten(index))

    def _observe_partial(self) -> None:
        """``SwarmDownload._observe_partial``: new prefix hashes, then the verified prefix."""
        before = self.prefix
        self._absorb()
        if self.prefix == before:
            return  # nothing the state has not heard
        if self.hashing:
            fresh = {i: self.blob.hashes[i] for i in range(before, self.prefix) if i not in self.piece_hashes}
            self.piece_hashes.update(fresh)
            if fresh:
                self.apply(ds.PiecesHashed(fresh))
        self.apply(ds.PrefixAdvanced(self._contiguous()))

    def _absorb(self) -> None:
        while self.prefix < self.blob.count and self.prefix in self.held:
            self.prefix += 1

    def _contiguous(self) -> int:
        return self.blob.geometry.size if self.prefix >= self.blob.count else self.blob.geometry.offset(self.prefix)

    def _fetch_origin(self, first: int) -> None:
        """Read pieces from the origin in order, from ``first`` (one flow: a GET with a Range);
        after ``GiveUp`` pieces held beyond the prefix are skipped."""
        geometry = self.blob.geometry
        for index in range(first, self.blob.count):
            if self.swarm_over and index in self.held:
                continue
            transfer = self.world.net.send(
                ORIGIN, self.agent.node, geometry.length(index), partial(self._from_origin, index)
            )
            self.origin_transfers.append(transfer)

    def _stop_origin(self) -> None:
        for t in self.origin_transfers:
            self.world.net.cancel(t)
        self.origin_transfers = []
        self.agent.fetches.ended(self)

    def _from_origin(self, index: int) -> None:
        if self.dead:
            return
        self.held.add(index)
        if index == self.blob.count - 1:
            self.agent.fetches.ended(self)  # the fetch reads in order: this was its last piece
        if self.swarm_over:
            self._absorb()
            if self.prefix >= self.blob.count:
                self._complete()
            return
        self._observe_partial()

    # -- the end of the swarm ----------------------------------------------------------------
    def _end_swarm(self) -> None:
        """``run()``'s end: stop the requests, the origin fetch and the loops."""
        self.swarm_over = True
        for t in self.requests.values():
            if t is not None:
                self.world.net.cancel(t)
        self.requests.clear()
        self._stop_origin()
        self.agent.fetches.leave(self)
        if self._wake is not None:
            self.world.timers.cancel(self._wake)
            self._wake, self._wake_at = None, None
        self.agent.seeds.supplied(Digest.parse(self.digest), self.blob.geometry, self.state.suppliers)

    def _give_up(self, action: ds.GiveUp) -> None:
        """``SwarmSource.fill`` after ``SwarmGaveUpError``: the rest from the origin, holding a
        granted fallback lease meanwhile (``keep_fallback``)."""
        self._end_swarm()
        if action.fallback_lease:
            self.agent.seeds.fallen_back(Digest.parse(self.digest))
            self._schedule_wake()
        self._absorb()
        if self.prefix >= self.blob.count:
            self._complete()
            return
        self._fetch_origin(self.prefix)

    def _keep_fallback(self) -> None:
        """A heartbeat that holds the fallback lease while the origin fills the rest."""
        if self.done or self.dead:
            return
        self._absorb()
        for event in (ds.PrefixAdvanced(self._contiguous()), ds.ReportDue()):
            self._apply_after(event)

    def _apply_after(self, event: ds.Event) -> None:
        """An event for a state that gave up under a fallback lease (it only reports)."""
        if self.done or self.dead:
            return
        for action in self.state.apply(event):
            if isinstance(action, ds.SendReport):
                self._send_report(action)
        self._schedule_wake()

    def _complete(self) -> None:
        if self.done:
            return
        self.done = True
        if self._wake is not None:
            self.world.timers.cancel(self._wake)
            self._wake, self._wake_at = None, None
        self.agent.blob_done(self.blob)

    # -- loops (SwarmDownload's) ---------------------------------------------------------------
    def _poll_hashes(self) -> None:
        if self.swarm_over or self.dead or self.hash_known >= self.blob.count:
            return

        def answered(view: HashesView | None) -> None:
            if view is None:
                self.world.timers.after(self.state.rules.report_interval, self._poll_hashes)
                return
            if view.hashes:
                self.apply(ds.HashesKnown({view.start + i: h for i, h in enumerate(view.hashes)}))
                self.hash_known = max(self.hash_known, view.start + len(view.hashes))
            pause = ds.hash_ask_pause(len(self.state.awaiting_hash))
            if pause > 0 and self.hash_known < self.blob.count:
                self._hash_pause = self.world.timers.after(pause, self._resume_hashes)
            else:
                self._poll_hashes()

        self.agent.services.scheduler.hashes(self.agent.node, self.digest, self.hash_known, answered)

    def _resume_hashes(self) -> None:
        self._hash_pause = None
        self._poll_hashes()

    def _tick(self) -> None:
        """The clock, and bytes still arriving on parents' links (slow is not stalled)."""
        if self.swarm_over or self.dead:
            return
        progress = self.bytes_seen + sum(self.world.net.progress(t) for t in self.requests.values() if t is not None)
        if progress > self._ticked:
            self.apply(ds.BytesArrived(int(progress - self._ticked)))
        else:
            self.apply(ds.Tick())
        self._ticked = max(self._ticked, progress)
        self.world.timers.after(TICK, self._tick)
