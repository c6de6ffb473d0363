"""Every peer connection of one agent, and what goes over them (event loop only).

The hub owns the links (one per peer, dialled on first need or accepted from the agent's
port) and routes what arrives: a parent's BITFIELD, HAVE, PIECE or REJECT goes to the
download of that blob; a child's INTERESTED, REQUEST or CANCEL is answered here from the
cache or from a blob still downloading. Nothing is polled: a child hears of a piece once, in
the bitfield it gets for asking or in one HAVE when the piece is verified here.

Only verified bytes are offered: a piece of a download is announced once its hash matched
(or the origin fetch's prefix passed it). While this node fetches a blob from the origin
(superseeding), a piece already accepted for ``superseed_copies`` children is refused to
more (REJECT): they take it from those children, and the fetcher's upload carries new
pieces instead of the same ones again. Every other node serves what it holds to whoever
asks: limiting them too starved a 40-node swarm until nodes completed. When the fetch ends
(the blob is complete, or the lease moved), every refused piece is announced again.

Those rules are the pure :class:`~shoal.p2p.serving.ServingBook`'s (the simulator runs the
same book); the hub finds what is held, and sends the bitfields, HAVEs and REJECTs it says.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, cast

from shoal.agent.metrics import AgentMetrics
from shoal.agent.peer_checks import first_message_size, foreign_identity, foreign_peer_id, own_host, wrong_protocol
from shoal.agent.peer_link import (
    MAX_QUEUED_PIECES,
    Channel,
    LinkError,
    PeerLink,
    PieceBody,
    PieceFile,
    answer,
    dial,
)
from shoal.agent.piece_buffers import PieceBuffers
from shoal.core.digest import Digest, DigestError
from shoal.core.ratelog import RateLimitedLog
from shoal.p2p import wire
from shoal.p2p.pieces import PieceGeometry
from shoal.p2p.ratelimit import TokenBucket
from shoal.p2p.serving import Haves, ServingBook
from shoal.p2p.tls import PeerIdentity, TlsContexts, TlsMaterialError
from shoal.p2p.wire.admission import Admission, AdmissionLimits
from shoal.store.blobstore import BlobStore
from shoal.store.partial import PartialBlob, PartialState

log = logging.getLogger(__name__)

HANDSHAKE_THREADS = 32
"""threads for inbound handshakes, and as many for outbound dials (apart: peers that stall
their handshakes cannot keep this agent from reaching its parents)"""
FIRST_MESSAGE_TIMEOUT = 2.0
"""seconds a new connection has to deliver its whole first message (HELLO, or a TLS
ClientHello) before it takes a handshake thread: waiting for it costs the event loop nothing"""
ANSWER_TIMEOUT = 4.0
"""seconds the rest of an inbound handshake may take, in its thread"""
LIVENESS_PERIOD = 5.0
"""seconds between liveness checks of all links (a keepalive where one is due)"""


class PieceSink(Protocol):
    """A download, as the hub sees it (called on the event loop)."""

    @property
    def size(self) -> int:
        """the blob's size: a parent's PIECE must be exactly the length of the piece asked for"""
        ...

    def parent_has(self, peer_id: str, pieces: Iterable[int]) -> None: ...

    def piece_arrived(self, peer_id: str, body: PieceBody) -> None: ...

    def piece_rejected(self, peer_id: str, index: int) -> None: ...

    def parent_lost(self, peer_id: str, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class HubConfig:
    peer_id: str
    secret: bytes
    connect_timeout: float = 10.0
    max_links: int = 1024
    peer_links_per_address: int = 4
    superseed_copies: int = 2
    tls: TlsContexts | None = None
    """TLS 1.3 with node certificates on every link (None: the lab's clear peer wire)"""

    @property
    def admission(self) -> AdmissionLimits:
        return AdmissionLimits(max_links=self.max_links, links_per_address=self.peer_links_per_address)


async def _first_message(loop: asyncio.AbstractEventLoop, sock: socket.socket, first: bytes) -> bytes:
    """``first`` and what follows it up to the end of the connection's first message (a HELLO
    frame, or a TLS record), read without a thread within ``FIRST_MESSAGE_TIMEOUT``."""
    sock.setblocking(False)
    data = bytearray(first)
    async with asyncio.timeout(FIRST_MESSAGE_TIMEOUT):
        while (need := first_message_size(data)) is None or len(data) < need:
            chunk = await loop.sock_recv(sock, 4096)
            if not chunk:
                raise LinkError("closed before its first message")
            data += chunk
    return bytes(data)


class PeerHub:
    def __init__(
        self,
        config: HubConfig,
        store: BlobStore,
        partials: Mapping[Digest, PartialBlob],
        metrics: AgentMetrics,
        bucket: TokenBucket,
    ) -> None:
        self.config = config
        self._store = store
        self.partials = partials
        """downloads in progress (the blob service's, set once it exists)"""
        self._metrics = metrics
        self._bucket = bucket
        self._loop = asyncio.get_running_loop()
        self._nonces = wire.NonceLog()
        self.links: dict[str, PeerLink] = {}
        """peer id -> the link used to reach it (the newest)"""
        self._all: set[PeerLink] = set()
        self._admission = Admission(config.admission)
        self._inbound: dict[PeerLink, tuple[str, str]] = {}
        """inbound links -> (source address, identity) they were admitted under"""
        self._handshakes: set[asyncio.Task[None]] = set()
        self._refusals = RateLimitedLog(log, "refusing peer connections")
        self._dialing: dict[str, asyncio.Task[PeerLink]] = {}
        self._sinks: dict[str, PieceSink] = {}
        """digest -> the download taking pieces of it"""
        self._via: dict[tuple[str, str], PeerLink] = {}
        """(peer id, digest) -> the link we said INTERESTED on"""
        self._adding: dict[tuple[str, str], object] = {}
        """(peer id, digest) -> the add_parent waiting for its link (forget_parent drops it)"""
        self.buffers = PieceBuffers()
        """piece bodies are read into these, and given back once written (see the module)"""
        self._book = ServingBook(superseed_copies=config.superseed_copies)
        """what each child link was told, refused and sent: the serving rules"""
        self._delayed: dict[PeerLink, dict[tuple[str, int], asyncio.TimerHandle]] = {}
        """pieces a link's child may have once the upload rate allows (not yet queued)"""
        self._liveness: asyncio.Task[None] | None = None
        self._answers = ThreadPoolExecutor(max_workers=HANDSHAKE_THREADS, thread_name_prefix="shoal-answer")
        self._dials = ThreadPoolExecutor(max_workers=HANDSHAKE_THREADS, thread_name_prefix="shoal-dial")
        """handshakes block for up to their timeout: in the loop's default pool they held the
        threads that piece writes (and the other side's handshakes) needed"""
        self.closed = False

    def start(self) -> None:
        self._liveness = asyncio.create_task(self._check_liveness(), name="peer liveness")

    async def close(self) -> None:
        if self._liveness is not None:
            self._liveness.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._liveness
        self.closed = True
        for task in [*self._handshakes, *self._dialing.values()]:
            task.cancel()
        for link in list(self._all):
            link.close("agent stopping")
        self._answers.shutdown(wait=False, cancel_futures=True)
        self._dials.shutdown(wait=False, cancel_futures=True)

    # -- connections ---------------------------------------------------------------------
    def accept(self, sock: socket.socket, first: bytes) -> None:
        """A connection on the agent's port that speaks the peer protocol (from the guard)."""
        try:
            source = sock.getpeername()[0]
        except OSError:
            sock.close()
            return
        refusal = "agent stopping" if self.closed else wrong_protocol(first, self.config.tls is not None)
        if refusal is None:
            refusal = self._admission.begin_handshake(source)
        if refusal is not None:
            self._refuse_connection(sock, refusal)
            return
        task = asyncio.create_task(self._answer(sock, first, source), name=f"peer handshake {source}")
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _answer(self, sock: socket.socket, first: bytes, source: str) -> None:
        tls = self.config.tls

        def check(peer_id: str, identity: PeerIdentity | None) -> str | None:
            if tls is None:
                return foreign_peer_id(peer_id, source)
            return foreign_identity(peer_id, source, identity)

        try:
            first = await _first_message(self._loop, sock, first)
            sock.setblocking(True)
            channel, conn = await self._loop.run_in_executor(
                self._answers,
                answer,
                sock,
                first,
                self.config.peer_id,
                self.config.secret,
                self._nonces,
                check,
                ANSWER_TIMEOUT,
                None if tls is None else tls.server_context(),
            )
        except asyncio.CancelledError:  # the agent is stopping
            sock.close()
            raise
        except TimeoutError:
            self._refuse_connection(sock, f"peer connection from {source}: handshake not complete in time")
            return
        except Exception as exc:
            self._refuse_connection(sock, f"peer connection from {source}: {exc}")
            return
        finally:
            self._admission.end_handshake(source)
        assert conn.peer_id is not None
        identity = conn.peer_id if channel.identity is None else channel.identity.name
        refusal = "agent stopping" if self.closed else self._admission.admit(source, identity)
        if refusal is not None:
            self._refuse_connection(sock, f"peer link from {source} ({conn.peer_id}): {refusal}")
            return
        link = PeerLink(channel, conn, self._loop, self, outbound=False, buffers=self.buffers)
        self._inbound[link] = (source, identity)
        self._add(link)

    def _refuse_connection(self, sock: socket.socket, why: str) -> None:
        self._metrics.peer_links_refused.inc()
        self._refusals.note(why)
        sock.close()

    async def link_to(self, peer_id: str, address: str) -> PeerLink:
        """The link to ``peer_id`` (dialling ``address`` if there is none yet).

        The dial is a task of the hub's: a caller cancelled mid-dial (its download ended)
        leaves it running, and the link joins the hub. The peer that answered has added the
        link already and may route its own downloads over it; dropping the finished handshake
        closed the socket under them, and the peer named this node a failed parent."""
        link = self.links.get(peer_id)
        if link is not None and not link.closed:
            return link
        dialing = self._dialing.get(peer_id)
        if dialing is None:
            refusal = "agent stopping" if self.closed else self._admission.may_dial()
            if refusal is not None:
                raise LinkError(f"not dialling {peer_id}: {refusal}")
            self._admission.dialling += 1
            task = asyncio.create_task(self._dial(peer_id, address), name=f"peer dial {peer_id}")
            # not the dial's ``finally``: a task that ``close()`` cancels before its first step
            # never enters its body, and its entry and count would stay
            task.add_done_callback(functools.partial(self._dialled, peer_id))
            self._dialing[peer_id] = dialing = task
        try:
            link = await asyncio.shield(dialing)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if dialing.cancelled() and (current is None or not current.cancelling()):
                # the hub closed under a caller that was not cancelled itself
                raise LinkError(f"not dialling {peer_id}: agent stopping") from None
            raise
        if link.closed:
            # closed in the loop steps since the dial (a peer that refused it after the
            # handshake): its link_closed may have run already, and a parent routed over it
            # would never be reported lost
            raise LinkError(f"link to {peer_id} closed as it opened: {link.reason or 'by the peer'}")
        return link

    def _dialled(self, peer_id: str, task: asyncio.Task[PeerLink]) -> None:
        if self._dialing.get(peer_id) is task:
            del self._dialing[peer_id]
        self._admission.dialling -= 1
        _retrieve(task)

    async def _dial(self, peer_id: str, address: str) -> PeerLink:
        try:
            tls = None if self.config.tls is None else self.config.tls.client_context()
        except TlsMaterialError as exc:  # not enrolled yet, a rotation half written
            raise LinkError(f"not dialling {peer_id}: {exc}") from None
        handshake = self._loop.run_in_executor(
            self._dials,
            dial,
            address,
            peer_id,
            self.config.peer_id,
            self.config.secret,
            self.config.connect_timeout,
            own_host(self.config.peer_id),
            tls,
        )
        try:
            channel, conn = await asyncio.shield(handshake)
        except asyncio.CancelledError:
            # the hub closed mid-handshake: the thread goes on, and its socket must not leak
            handshake.add_done_callback(_close_dialled)
            raise
        link = PeerLink(channel, conn, self._loop, self, outbound=True, buffers=self.buffers)
        self._add(link)
        return link

    def _add(self, link: PeerLink) -> None:
        if self.closed:
            self._inbound.pop(link, None)
            link.close("agent stopping")
            link.start()
            return
        if link.outbound:
            self._admission.outbound += 1
        self._all.add(link)
        self.links[link.peer_id] = link
        self._metrics.peer_links.set(len(self._all))
        link.start()

    async def _check_liveness(self) -> None:
        silence = 3 * wire.KEEPALIVE_INTERVAL
        while True:
            await asyncio.sleep(LIVENESS_PERIOD)
            for link in list(self._all):
                if link.silent_for() > silence:
                    log.warning("peer %s silent for %.0fs: closing its link", link.peer_id, silence)
                    link.abort()
                else:
                    link.keepalive()

    # -- downloads (the parent side of a link) ----------------------------------------------
    def register(self, digest: Digest, sink: PieceSink) -> None:
        self._sinks[str(digest)] = sink

    def unregister(self, digest: Digest) -> None:
        key = str(digest)
        self._sinks.pop(key, None)
        for peer_key in [k for k in self._via if k[1] == key]:
            self.forget_parent(peer_key[0], digest)

    async def add_parent(self, digest: Digest, pieces: int, peer_id: str, address: str) -> None:
        """Connect to the parent (or reuse the link) and ask what it holds of the blob."""
        key = (peer_id, str(digest))
        self._adding[key] = token = object()
        try:
            link = await self.link_to(peer_id, address)
        finally:
            # forgotten while we dialled (the download dropped it): not its parent any more
            forgotten = self._adding.get(key) is not token
            if not forgotten:
                del self._adding[key]
        sink = self._sinks.get(str(digest))
        if forgotten or key in self._via or sink is None:
            return
        self._via[key] = link
        link.watch_bytes(str(digest))
        link.send(wire.Interested(str(digest), pieces, size=sink.size))

    def bytes_from(self, peer_id: str, digest: Digest) -> int:
        """Piece bytes received so far on the link a download asks ``peer_id`` on."""
        link = self._via.get((peer_id, str(digest)))
        return 0 if link is None else link.bytes_in(str(digest))

    def request(self, peer_id: str, digest: Digest, index: int) -> bool:
        link = self._via.get((peer_id, str(digest)))
        if link is None or link.closed:
            return False
        link.send(wire.Request(str(digest), index))
        return True

    def cancel(self, peer_id: str, digest: Digest, index: int) -> None:
        link = self._via.get((peer_id, str(digest)))
        if link is not None:
            link.send(wire.Cancel(str(digest), index))

    def forget_parent(self, peer_id: str, digest: Digest) -> None:
        self._adding.pop((peer_id, str(digest)), None)
        link = self._via.pop((peer_id, str(digest)), None)
        if link is not None:
            link.forget_bytes(str(digest))
            link.send(wire.NotInterested(str(digest)))

    # -- link events ---------------------------------------------------------------------------
    def link_events(self, link: PeerLink, events: list[wire.Event]) -> None:
        haves: dict[str, list[int]] = {}
        """HAVEs of one batch, by blob: one call to the download each (a busy parent sends
        dozens at once, and every call is an event its owner plans after)"""
        for event in events:
            if isinstance(event, wire.Have):
                haves.setdefault(event.digest, []).append(event.index)
                continue
            if haves:  # in order: a REJECT after a HAVE of the same piece must win
                self._deliver_haves(link, haves)
                haves = {}
            match event:
                case wire.Bitfield():
                    if (sink := self._sink_for(link, event.digest)) is not None:
                        sink.parent_has(link.peer_id, event.indices())
                case wire.Reject():
                    if (sink := self._sink_for(link, event.digest)) is not None:
                        sink.piece_rejected(link.peer_id, event.index)
                case wire.Interested():
                    self._on_interested(link, event)
                case wire.NotInterested():
                    self._book.not_interested(link, event.digest)
                case wire.Request():
                    self._on_request(link, event)
                case wire.Cancel():
                    self._on_cancel(link, event)
                case _:
                    pass  # KEEPALIVE
        self._deliver_haves(link, haves)

    def _deliver_haves(self, link: PeerLink, haves: dict[str, list[int]]) -> None:
        for digest, indices in haves.items():
            if (sink := self._sink_for(link, digest)) is not None:
                sink.parent_has(link.peer_id, indices)

    def link_piece(self, link: PeerLink, body: PieceBody) -> None:
        self._metrics.peer_bytes.labels("download").inc(len(body.data))
        sink = self._sink_for(link, body.digest)
        if sink is not None:
            sink.piece_arrived(link.peer_id, body)
        else:
            body.release()

    def link_piece_sent(self, link: PeerLink, digest: str, index: int, length: int) -> None:
        """In the link's writer thread: counts only (prometheus counters take a lock)."""
        self._metrics.peer_bytes.labels("upload").inc(length)
        self._metrics.pieces_served.inc()

    def link_piece_dropped(self, link: PeerLink, digest: str, index: int, aborted: bool) -> None:
        if aborted:
            self._metrics.peer_uploads_aborted.inc()
        self._book.dropped(link, digest, index)  # no child got this copy: another may have it

    def link_closed(self, link: PeerLink, reason: str) -> None:
        if link not in self._all:
            return
        self._all.discard(link)
        admitted = self._inbound.pop(link, None)
        if admitted is not None:
            self._admission.release(*admitted)
        elif link.outbound:
            self._admission.outbound -= 1
        self._metrics.peer_links.set(len(self._all))
        if self.links.get(link.peer_id) is link:
            del self.links[link.peer_id]
        log.info("peer link to %s closed: %s", link.peer_id, reason)
        for key in [k for k, v in self._via.items() if v is link]:
            del self._via[key]
            sink = self._sinks.get(key[1])
            if sink is not None:
                sink.parent_lost(link.peer_id, f"link closed: {reason}")
        self._book.gone(link)
        for handle in self._delayed.pop(link, {}).values():
            handle.cancel()

    def _sink_for(self, link: PeerLink, digest: str) -> PieceSink | None:
        if self._via.get((link.peer_id, digest)) is not link:
            return None  # a frame that raced our NOT_INTERESTED, or another link's
        return self._sinks.get(digest)

    # -- serving (the child side of a link) ----------------------------------------------------
    def _held(self, digest: str, pieces: int) -> list[int] | None:
        """The pieces of ``digest`` we may serve; None if we do not know the blob at that
        piece count."""
        try:
            key = Digest.parse(digest)
        except DigestError:
            return None
        size = self._store.blob_size(key)
        if size is not None:
            geometry = PieceGeometry.of(size)
            return list(range(geometry.count)) if geometry.count == pieces else None
        partial = self._downloading(key)
        if partial is None or partial.size is None:
            return []  # perhaps later: HAVEs follow when a download starts here
        geometry = PieceGeometry.of(partial.size)
        if geometry.count != pieces:
            return None
        return [i for i in range(pieces) if partial.has(*geometry.span(i))]

    def _on_interested(self, link: PeerLink, event: wire.Interested) -> None:
        held = self._held(event.digest, event.pieces)
        if held is None:
            self._book.not_interested(link, event.digest)
            link.send(wire.Bitfield.of(event.digest, event.pieces, ()))
            return
        told = self._book.interested(link, event.digest, held)
        link.send(wire.Bitfield.of(event.digest, event.pieces, told))

    def _send_haves(self, digest: str, haves: Haves) -> None:
        for child, indices in haves:
            link = cast(PeerLink, child)
            for index in indices:
                link.send(wire.Have(digest, index))

    def announce(self, digest: Digest, indices: Iterable[int]) -> None:
        """Pieces of a download here were verified: one HAVE each to every interested child."""
        key = str(digest)
        self._send_haves(key, self._book.announce(key, indices))

    def superseed(self, digest: Digest) -> None:
        """This node fetches ``digest`` from the origin: limit the copies of each new piece."""
        self._book.superseed(str(digest))

    def stop_superseeding(self, digest: Digest) -> None:
        """The origin fetch ended without the blob (the lease moved): what children were
        refused is theirs to ask for again."""
        key = str(digest)
        haves = self._book.stop_superseeding(key, lambda index: self._piece_source(key, index) is not None)
        self._send_haves(key, haves)

    def blob_complete(self, digest: Digest, size: int) -> None:
        """Every piece is here: announce what children were refused or not yet told."""
        key = str(digest)
        self._send_haves(key, self._book.blob_complete(key, PieceGeometry.of(size).count))

    def _on_request(self, link: PeerLink, event: wire.Request) -> None:
        source = self._piece_source(event.digest, event.index)
        delayed = self._delayed.setdefault(link, {})
        if source is None:
            accepted = self._book.accept(link, event.digest, event.index, held=False)
        elif link.queued_pieces + len(delayed) >= MAX_QUEUED_PIECES:
            self._book.refuse(link, event.digest, event.index)  # a peer that does not read what it asked for
            accepted = False
        else:
            accepted = self._book.accept(link, event.digest, event.index, held=True, complete=source[3])
        if not accepted:
            self._metrics.pieces_refused.inc()
            link.send(wire.Reject(event.digest, event.index))
            return
        assert source is not None
        file, offset, length, _ = source
        delay = 0.0 if self._bucket.rate <= 0 else self._bucket.delay_for(length)
        if delay <= 0:
            link.send_piece(event.digest, event.index, file, offset, length)
            return
        key = (event.digest, event.index)

        def send_later() -> None:
            delayed.pop(key, None)
            link.send_piece(event.digest, event.index, file, offset, length)

        delayed[key] = self._loop.call_later(delay, send_later)

    def _on_cancel(self, link: PeerLink, event: wire.Cancel) -> None:
        """A cancelled piece leaves the queue now: it holds no slot while the writer is busy
        (or blocked on a peer that does not read)."""
        handle = self._delayed.get(link, {}).pop((event.digest, event.index), None)
        if handle is not None:
            handle.cancel()
        elif not link.cancel_piece(event.digest, event.index):
            return  # on its way already, or answered
        self.link_piece_dropped(link, event.digest, event.index, False)

    def _piece_source(self, digest: str, index: int) -> tuple[PieceFile, int, int, bool] | None:
        """(where its file is, offset, length, blob complete) of a piece we hold verified, or None."""
        key = Digest.parse(digest)
        path = self._store.blob_path(key)
        size = self._store.blob_size(key)
        partial = None
        if path is None or size is None:
            partial = self._downloading(key)
            if partial is None or partial.size is None:
                return None
            size = partial.size
        try:
            offset, length = PieceGeometry.of(size).span(index)
        except ValueError:
            return None
        if partial is not None:
            if not partial.has(offset, length):
                return None
            download = partial
            return (lambda: download.path), offset, length, False
        cached = path
        assert cached is not None
        return (lambda: cached), offset, length, True

    def _downloading(self, key: Digest) -> PartialBlob | None:
        """The download of ``key`` here, if its verified pieces may be served."""
        partial = self.partials.get(key)
        if partial is None or partial.size is None or partial.state is PartialState.FAILED:
            return None
        return partial


def _close_dialled(handshake: asyncio.Future[tuple[Channel, wire.Connection]]) -> None:
    """Close the socket of a handshake that finished after its dial was cancelled."""
    if not handshake.cancelled() and handshake.exception() is None:
        handshake.result()[0].sock.close()


def _retrieve(task: asyncio.Task[PeerLink]) -> None:
    """Take a dial's outcome, so that one no caller waits for any more is not logged as an
    exception never retrieved (its callers, if any, got it through their shield)."""
    if not task.cancelled():
        task.exception()
