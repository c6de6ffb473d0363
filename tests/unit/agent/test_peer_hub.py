"""The hub's serving rules with fake links and a real store: what a child is told (bitfield,
then one HAVE per verified piece), what it may have (only verified pieces; a downloading
blob's piece at most ``superseed_copies`` times), and the routing of a parent's frames."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import cast

import pytest

from shoal.agent import peer_hub
from shoal.agent.metrics import AgentMetrics
from shoal.agent.peer_checks import foreign_identity, foreign_peer_id, wrong_protocol
from shoal.agent.peer_hub import HubConfig, PeerHub
from shoal.agent.peer_link import LinkError, PeerLink, PieceBody, peer_secret
from shoal.core.digest import Digest
from shoal.p2p import wire
from shoal.p2p.ratelimit import TokenBucket
from shoal.p2p.tls import PeerIdentity, TlsDirectory
from shoal.store.blobstore import BlobStore
from shoal.store.partial import PartialBlob

MiB = 1 << 20


class FakeLink:
    outbound = False

    def __init__(self, peer_id: str) -> None:
        self.peer_id = peer_id
        self.closed = False
        self.received: dict[str, int] = {}
        self.sent: list[wire.Event] = []
        self.pieces: list[tuple[str, int, int, int]] = []
        self.reason = ""

    def send(self, event: wire.Event) -> None:
        self.sent.append(event)

    def bytes_in(self, digest: str) -> int:
        return self.received.get(digest, 0)

    def watch_bytes(self, digest: str) -> None:
        self.received.setdefault(digest, 0)

    def forget_bytes(self, digest: str) -> None:
        self.received.pop(digest, None)

    queued_pieces = 0

    def send_piece(self, digest: str, index: int, file: Callable[[], Path], offset: int, length: int) -> None:
        assert file().is_file()
        self.pieces.append((digest, index, offset, length))

    def cancel_piece(self, digest: str, index: int) -> bool:
        return False

    def close(self, reason: str) -> None:
        self.closed, self.reason = True, reason

    def keepalive(self) -> None:
        pass


class Sink:
    size = 64 << 20

    def __init__(self) -> None:
        self.has: list[tuple[str, list[int]]] = []
        self.arrived: list[tuple[str, int]] = []
        self.rejected: list[tuple[str, int]] = []
        self.lost: list[str] = []

    def parent_has(self, peer_id: str, pieces: Iterable[int]) -> None:
        self.has.append((peer_id, sorted(pieces)))

    def piece_arrived(self, peer_id: str, body: PieceBody) -> None:
        self.arrived.append((peer_id, body.index))

    def piece_rejected(self, peer_id: str, index: int) -> None:
        self.rejected.append((peer_id, index))

    def parent_lost(self, peer_id: str, reason: str) -> None:
        self.lost.append(peer_id)


def as_link(fake: FakeLink) -> PeerLink:
    return cast(PeerLink, fake)


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    s = BlobStore(tmp_path / "cache", ttl=3600.0, max_size=None)
    s.open()
    return s


async def cached_blob(store: BlobStore, data: bytes) -> Digest:
    digest = Digest.of(data)
    partial = store.begin(digest, len(data))
    await partial.write(0, data)
    partial.finish()
    await store.commit(partial)
    return digest


async def first_piece_written(store: BlobStore, data: bytes) -> tuple[Digest, PartialBlob]:
    """A download of ``data`` (two pieces) that holds its first piece only."""
    digest = Digest.of(data)
    partial = store.begin(digest, len(data))
    await partial.write(0, data[:MiB])
    return digest, partial


def hub(store: BlobStore, partials: dict[Digest, PartialBlob] | None = None, copies: int = 2) -> PeerHub:
    config = HubConfig(peer_id="127.0.0.1:1", secret=peer_secret("t"), superseed_copies=copies)
    return PeerHub(config, store, partials or {}, AgentMetrics(), TokenBucket(0))


def haves(link: FakeLink) -> list[int]:
    return [e.index for e in link.sent if isinstance(e, wire.Have)]


class TestServing:
    async def test_a_cached_blob_is_offered_whole(self, store: BlobStore) -> None:
        digest = await cached_blob(store, os.urandom(3 * MiB))
        h, child = hub(store), FakeLink("127.0.0.2:1")
        h.link_events(as_link(child), [wire.Interested(str(digest), 3)])
        assert child.sent == [wire.Bitfield.of(str(digest), 3, [0, 1, 2])]
        h.link_events(as_link(child), [wire.Request(str(digest), 2)])
        assert child.pieces == [(str(digest), 2, 2 * MiB, MiB)]

    async def test_a_piece_count_that_is_not_the_blobs_gets_nothing(self, store: BlobStore) -> None:
        digest = await cached_blob(store, os.urandom(3 * MiB))
        h, child = hub(store), FakeLink("127.0.0.2:1")
        h.link_events(as_link(child), [wire.Interested(str(digest), 4)])
        assert child.sent == [wire.Bitfield.of(str(digest), 4, [])]
        h.blob_complete(digest, 3 * MiB)
        assert haves(child) == []

    async def test_a_downloading_blob_offers_verified_pieces_then_one_have_each(self, store: BlobStore) -> None:
        data = os.urandom(4 * MiB)
        digest = Digest.of(data)
        partial = store.begin(digest, len(data))
        await partial.write(MiB, data[MiB : 2 * MiB])  # piece 1, out of order
        h, child = hub(store, {digest: partial}), FakeLink("127.0.0.2:1")
        h.link_events(as_link(child), [wire.Interested(str(digest), 4)])
        assert child.sent == [wire.Bitfield.of(str(digest), 4, [1])]
        h.link_events(as_link(child), [wire.Request(str(digest), 0)])
        assert child.pieces == []
        assert child.sent[-1] == wire.Reject(str(digest), 0)
        await partial.write(0, data[:MiB])
        h.announce(digest, [0, 1])
        assert haves(child) == [0]  # piece 1 was in the bitfield
        partial.fail(RuntimeError("test over"))

    async def test_superseeding_refuses_a_third_copy_until_the_blob_is_complete(self, store: BlobStore) -> None:
        data = os.urandom(2 * MiB)
        digest, partial = await first_piece_written(store, data)
        h = hub(store, {digest: partial}, copies=2)
        h.superseed(digest)  # we fetch it from the origin
        children = [FakeLink(f"127.0.0.{i}:1") for i in range(2, 5)]
        for child in children:
            h.link_events(as_link(child), [wire.Interested(str(digest), 2)])
        for child in children[:2]:
            h.link_events(as_link(child), [wire.Request(str(digest), 0)])  # not sent yet: counts
        late = children[2]
        h.link_events(as_link(late), [wire.Request(str(digest), 0)])
        assert late.pieces == []
        assert late.sent[-1] == wire.Reject(str(digest), 0)
        await partial.write(MiB, data[MiB:])
        partial.finish()
        await store.commit(partial)
        h.blob_complete(digest, len(data))
        assert haves(late) == [0, 1]  # the refused piece is offered again
        assert haves(children[0]) == [1]
        h.link_events(as_link(late), [wire.Request(str(digest), 0)])
        assert late.pieces == [(str(digest), 0, 0, MiB)]

    async def test_a_blob_committed_while_superseeding_is_served_to_all_at_once(self, store: BlobStore) -> None:
        """The store's word wins: a blob whole here is not limited while its completion is
        still on the way to the hub."""
        data = os.urandom(2 * MiB)
        digest = Digest.of(data)
        partial = store.begin(digest, len(data))
        await partial.write(0, data)
        h = hub(store, {digest: partial}, copies=1)
        h.superseed(digest)
        first, second = FakeLink("127.0.0.2:1"), FakeLink("127.0.0.3:1")
        h.link_events(as_link(first), [wire.Interested(str(digest), 2), wire.Request(str(digest), 0)])
        h.link_events(as_link(second), [wire.Interested(str(digest), 2), wire.Request(str(digest), 0)])
        assert second.sent[-1] == wire.Reject(str(digest), 0)
        partial.finish()
        await store.commit(partial)
        h.link_events(as_link(second), [wire.Request(str(digest), 0)])
        assert second.pieces == [(str(digest), 0, 0, MiB)]

    async def test_a_copy_dropped_before_it_left_frees_its_place(self, store: BlobStore) -> None:
        data = os.urandom(2 * MiB)
        digest, partial = await first_piece_written(store, data)
        h = hub(store, {digest: partial}, copies=1)
        h.superseed(digest)
        first, second = FakeLink("127.0.0.2:1"), FakeLink("127.0.0.3:1")
        h.link_events(as_link(first), [wire.Interested(str(digest), 2), wire.Request(str(digest), 0)])
        h.link_piece_dropped(as_link(first), str(digest), 0, True)  # its link broke first
        h.link_events(as_link(second), [wire.Interested(str(digest), 2), wire.Request(str(digest), 0)])
        assert second.pieces == [(str(digest), 0, 0, MiB)]
        partial.fail(RuntimeError("test over"))

    async def test_only_the_origin_fetcher_superseeds(self, store: BlobStore) -> None:
        """A node that is not fetching from the origin serves every piece it holds to every
        child that asks: limiting relays too starved a 40-node swarm until nodes completed."""
        data = os.urandom(2 * MiB)
        digest, partial = await first_piece_written(store, data)
        h = hub(store, {digest: partial}, copies=1)
        children = [FakeLink(f"127.0.0.{i}:1") for i in range(2, 6)]
        for child in children:
            h.link_events(as_link(child), [wire.Interested(str(digest), 2), wire.Request(str(digest), 0)])
        assert all(c.pieces == [(str(digest), 0, 0, MiB)] for c in children)
        partial.fail(RuntimeError("test over"))

    async def test_a_lease_that_moves_ends_superseeding(self, store: BlobStore) -> None:
        data = os.urandom(2 * MiB)
        digest, partial = await first_piece_written(store, data)
        h = hub(store, {digest: partial}, copies=1)
        h.superseed(digest)
        first, second = FakeLink("127.0.0.2:1"), FakeLink("127.0.0.3:1")
        for child in (first, second):
            h.link_events(as_link(child), [wire.Interested(str(digest), 2), wire.Request(str(digest), 0)])
        assert second.sent[-1] == wire.Reject(str(digest), 0)
        h.stop_superseeding(digest)
        assert haves(second) == [0]  # offered again
        h.link_events(as_link(second), [wire.Request(str(digest), 0)])
        assert second.pieces == [(str(digest), 0, 0, MiB)]
        partial.fail(RuntimeError("test over"))

    async def test_a_child_that_leaves_hears_no_more(self, store: BlobStore) -> None:
        data = os.urandom(2 * MiB)
        digest = Digest.of(data)
        partial = store.begin(digest, len(data))
        h, child = hub(store, {digest: partial}), FakeLink("127.0.0.2:1")
        h.link_events(as_link(child), [wire.Interested(str(digest), 2), wire.NotInterested(str(digest))])
        await partial.write(0, data[:MiB])
        h.announce(digest, [0])
        assert haves(child) == []
        partial.fail(RuntimeError("test over"))


class TestRouting:
    async def test_a_parents_frames_go_to_the_download_that_asked(self, store: BlobStore) -> None:
        h, parent = hub(store), FakeLink("127.0.0.9:1")
        digest = Digest.of(b"x")
        sink = Sink()
        h.register(digest, sink)
        h.links[parent.peer_id] = as_link(parent)
        h._all.add(as_link(parent))
        await h.add_parent(digest, 3, parent.peer_id, "unused")
        assert parent.sent == [wire.Interested(str(digest), 3)]
        other = Digest.of(b"y")
        h.link_events(
            as_link(parent),
            [
                wire.Bitfield.of(str(digest), 3, [0, 2]),
                wire.Have(str(digest), 1),
                wire.Have(str(other), 0),  # never asked about: nobody hears of it
                wire.Reject(str(digest), 2),
            ],
        )
        assert sink.has == [(parent.peer_id, [0, 2]), (parent.peer_id, [1])]
        assert sink.rejected == [(parent.peer_id, 2)]
        assert h.request(parent.peer_id, digest, 1)
        assert parent.sent[-1] == wire.Request(str(digest), 1)
        assert not h.request("127.0.0.8:1", digest, 1)  # no link to that one
        h.link_closed(as_link(parent), "gone")
        assert sink.lost == [parent.peer_id]
        assert not h.request(parent.peer_id, digest, 1)

    async def test_a_downloads_progress_is_its_own_blobs_bytes(self, store: BlobStore) -> None:
        h, parent = hub(store), FakeLink("127.0.0.9:1")
        digest, other = Digest.of(b"x"), Digest.of(b"y")
        h.register(digest, Sink())
        h.links[parent.peer_id] = as_link(parent)
        h._all.add(as_link(parent))
        await h.add_parent(digest, 3, parent.peer_id, "unused")
        parent.received = {str(other): 5 * MiB, str(digest): MiB}
        assert h.bytes_from(parent.peer_id, digest) == MiB
        h.forget_parent(parent.peer_id, digest)
        assert h.bytes_from(parent.peer_id, digest) == 0
        assert parent.received == {str(other): 5 * MiB}

    async def test_a_parent_added_counts_its_blobs_bytes(self, store: BlobStore) -> None:
        """The link counts only the blobs a download asks on it (so nothing is left behind
        for the bodies that arrive after the download let the parent go)."""
        h, parent = hub(store), FakeLink("127.0.0.9:1")
        digest = Digest.of(b"x")
        h.register(digest, Sink())
        h.links[parent.peer_id] = as_link(parent)
        h._all.add(as_link(parent))
        await h.add_parent(digest, 3, parent.peer_id, "unused")
        assert parent.received == {str(digest): 0}
        h.unregister(digest)
        assert parent.received == {}


class TestPeerIds:
    @pytest.mark.parametrize(
        ("peer_id", "source", "refused"),
        [
            ("10.0.0.5:65001", "10.0.0.5", False),
            ("10.0.0.6:65001", "10.0.0.5", True),
            ("10.0.0.6:65001", "127.0.0.1", False),  # a lab on one host
            ("[fd00::5]:65001", "fd00::5", False),
            ("node-a:65001", "10.0.0.5", True),
            ("10.0.0.5", "10.0.0.5", True),
        ],
    )
    def test_a_peer_may_only_call_itself_by_its_own_address(self, peer_id: str, source: str, refused: bool) -> None:
        assert (foreign_peer_id(peer_id, source) is not None) == refused


class TestCertificateIdentities:
    """With TLS, the verified certificate decides: it must name the address the connection
    comes from and the address the claimed peer id names; loopback is no exception."""

    NODE = PeerIdentity("node-a", ("node-a",), ("10.0.0.5", "127.0.0.2"))

    @pytest.mark.parametrize(
        ("peer_id", "source", "identity", "refusal"),
        [
            ("10.0.0.5:65001", "10.0.0.5", NODE, None),
            ("127.0.0.2:65001", "127.0.0.2", NODE, None),
            ("10.0.0.5:65001", "10.0.0.6", NODE, "presented from 10.0.0.6"),
            ("10.0.0.6:65001", "10.0.0.5", NODE, "not an address of node-a"),
            ("10.0.0.5:65001", "127.0.0.1", NODE, "presented from 127.0.0.1"),
            ("node-a:65001", "10.0.0.5", NODE, "not an address of node-a"),
            ("10.0.0.5", "10.0.0.5", NODE, "not IP:PORT"),
            ("10.0.0.5:65001", "10.0.0.5", None, "no client certificate"),
        ],
    )
    def test_the_certificate_must_name_the_source_and_the_id(
        self, peer_id: str, source: str, identity: PeerIdentity | None, refusal: str | None
    ) -> None:
        got = foreign_identity(peer_id, source, identity)
        if refusal is None:
            assert got is None
        else:
            assert got is not None
            assert refusal in got

    @pytest.mark.parametrize(
        ("first", "tls", "refused"),
        [(b"\x00", False, False), (b"\x16", True, False), (b"\x00", True, True), (b"\x16", False, True)],
    )
    def test_a_connection_must_speak_the_wire_this_agent_runs(self, first: bytes, tls: bool, refused: bool) -> None:
        assert (wrong_protocol(first, tls) is not None) == refused


class TestHaveBatches:
    """A batch of HAVEs reaches the download as one call per blob, in order with the other
    frames (a REJECT after a HAVE of the same piece must not be undone by it)."""

    async def test_haves_are_merged_but_stay_in_order(self, store: BlobStore) -> None:
        h, parent = hub(store), FakeLink("127.0.0.9:1")
        digest = Digest.of(b"x")
        sink = Sink()
        h.register(digest, sink)
        h.links[parent.peer_id] = as_link(parent)
        h._all.add(as_link(parent))
        await h.add_parent(digest, 8, parent.peer_id, "unused")
        d = str(digest)
        h.link_events(
            as_link(parent),
            [
                wire.Bitfield.of(d, 8, []),
                wire.Have(d, 1),
                wire.Have(d, 2),
                wire.Have(d, 3),
                wire.Reject(d, 3),
                wire.Have(d, 4),
            ],
        )
        assert sink.has == [(parent.peer_id, []), (parent.peer_id, [1, 2, 3]), (parent.peer_id, [4])]
        assert sink.rejected == [(parent.peer_id, 3)]


class TestOwnTlsMaterial:
    async def test_an_incomplete_tls_directory_fails_the_dial_as_a_link_error(
        self, store: BlobStore, tmp_path: Path
    ) -> None:
        """Our own certificate missing (enrollment not done, a rotation half written): the
        download hears of a parent it cannot reach (it used to get an exception no task took,
        the parent held for ever without a link)."""
        config = HubConfig(peer_id="127.0.0.1:1", secret=peer_secret("t"), tls=TlsDirectory(tmp_path / "empty"))
        h = PeerHub(config, store, {}, AgentMetrics(), TokenBucket(0))
        with pytest.raises(LinkError, match="missing"):
            await h.link_to("127.0.0.2:1", "127.0.0.2:1")
        await h.close()


class DialledLink(FakeLink):
    outbound = True

    def start(self) -> None:
        pass


class SlowDials:
    """The hub's ``dial`` and ``PeerLink`` patched: each dial waits for ``release``, then
    makes a fake link (kept in ``made``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.release = threading.Event()
        self.dials: list[str] = []
        self.made: list[FakeLink] = []
        monkeypatch.setattr(peer_hub, "dial", self.dial)
        monkeypatch.setattr(peer_hub, "PeerLink", self.link)

    def dial(self, address: str, *args: object) -> tuple[str, str]:
        self.dials.append(address)
        self.release.wait(5.0)
        return "channel", "conn"

    def link(self, channel: object, conn: object, *args: object, **kw: object) -> FakeLink:
        self.made.append(link := DialledLink("127.0.0.2:1"))
        return link

    async def started(self) -> None:
        while not self.dials:
            await asyncio.sleep(0.01)


class TestDialsOutliveTheirCaller:
    """A dial is the hub's, not the caller's: the peer that answered it has added the link
    and may route its own downloads over it. A download that ends mid-dial (a one-piece blob
    that another parent served first) used to cancel the dial's future: the finished
    handshake was dropped, the socket closed unannounced, and the peer lost every parent it
    had routed over that link and named this node in ``failed_parents``. One such close made
    a lab rollout's fetcher a suspect, left out of every child's parents for a minute."""

    async def test_a_dial_whose_caller_was_cancelled_still_joins_the_hub(
        self, store: BlobStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        dials = SlowDials(monkeypatch)
        made = dials.made
        h = hub(store)
        caller = asyncio.create_task(h.link_to("127.0.0.2:1", "127.0.0.2:1"))
        await dials.started()
        caller.cancel()
        dials.release.set()
        with pytest.raises(asyncio.CancelledError):
            await caller
        for _ in range(200):
            if made:
                break
            await asyncio.sleep(0.01)
        assert made, "the handshake that completed was dropped"
        assert h.links["127.0.0.2:1"] is as_link(made[0])
        assert not made[0].closed
        assert await h.link_to("127.0.0.2:1", "127.0.0.2:1") is as_link(made[0])  # no second dial
        assert dials.dials == ["127.0.0.2:1"]
        await h.close()

    async def test_a_dial_the_closing_hub_cancels_before_it_ran_leaves_nothing_behind(self, store: BlobStore) -> None:
        # a task cancelled before its first step never enters its body: bookkeeping kept in
        # the dial's ``finally`` stayed (the dial in ``_dialing``, the ``dialling`` count)
        h = hub(store)
        caller = asyncio.create_task(h.link_to("127.0.0.2:1", "127.0.0.2:1"))
        await asyncio.sleep(0)  # the caller started its dial, which has not run yet
        await h.close()
        with pytest.raises(LinkError, match="agent stopping"):
            await caller  # not a CancelledError: the caller itself was not cancelled
        await asyncio.sleep(0)
        assert not h._dialing
        assert h._admission.dialling == 0
        with pytest.raises(LinkError, match="agent stopping"):
            await h.link_to("127.0.0.2:1", "127.0.0.2:1")

    async def test_a_handshake_that_ends_after_the_hub_closed_closes_its_socket(
        self, store: BlobStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        release = threading.Event()
        dials: list[str] = []
        ours, theirs = socket.socketpair()

        class Channel:
            def __init__(self, sock: socket.socket) -> None:
                self.sock = sock

        def slow_dial(address: str, *args: object) -> tuple[Channel, str]:
            dials.append(address)
            release.wait(5.0)
            return Channel(ours), "conn"

        monkeypatch.setattr(peer_hub, "dial", slow_dial)
        h = hub(store)
        try:
            caller = asyncio.create_task(h.link_to("127.0.0.2:1", "127.0.0.2:1"))
            while not dials:
                await asyncio.sleep(0.01)
            await h.close()  # the agent stops mid-handshake
            release.set()
            with pytest.raises(LinkError, match="agent stopping"):
                await caller
            for _ in range(200):
                if ours.fileno() == -1:
                    break
                await asyncio.sleep(0.01)
            assert ours.fileno() == -1, "the finished handshake's socket was left open"
        finally:
            ours.close()
            theirs.close()

    async def test_a_parent_forgotten_while_its_link_is_dialled_is_not_asked(
        self, store: BlobStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # the download dropped the parent while the dial ran (a refusal, a move): the late
        # add_parent routed it and sent INTERESTED anyway, and the download's next add of it
        # found the route and sent nothing, so the parent's pieces were never heard of
        dials = SlowDials(monkeypatch)
        made = dials.made
        h = hub(store)
        digest = Digest.of(b"x")
        h.register(digest, Sink())
        adding = asyncio.create_task(h.add_parent(digest, 3, "127.0.0.2:1", "127.0.0.2:1"))
        await dials.started()
        h.forget_parent("127.0.0.2:1", digest)
        dials.release.set()
        await adding
        assert made
        assert made[0].sent == []
        await h.add_parent(digest, 3, "127.0.0.2:1", "127.0.0.2:1")  # named again
        assert made[0].sent == [wire.Interested(str(digest), 3)]
        await h.close()

    async def test_a_link_that_closed_as_it_opened_is_not_taken_for_the_parents(
        self, store: BlobStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A peer that admits the handshake and then refuses the link (its limits) closes it at
        # once: the link's reader ends and posts link_closed before the caller, a loop step or
        # two after the dial, routes the parent. The route went to the closed link, so the
        # download never heard the parent was lost and kept it, silent, until it stalled.
        made: list[FakeLink] = []
        h = hub(store)

        def quick_dial(address: str, *args: object) -> tuple[str, str]:
            return "channel", "conn"

        class Link(FakeLink):
            outbound = True

            def __init__(self, channel: object, conn: object, *args: object, **kw: object) -> None:
                super().__init__("127.0.0.2:1")
                made.append(self)

            def start(self) -> None:  # the reader finds the peer's close in the handshake's bytes
                self.closed = True
                asyncio.get_running_loop().call_soon(h.link_closed, as_link(self), "closed by the peer")

        monkeypatch.setattr(peer_hub, "dial", quick_dial)
        monkeypatch.setattr(peer_hub, "PeerLink", Link)
        digest = Digest.of(b"x")
        sink = Sink()
        h.register(digest, sink)
        with pytest.raises(LinkError, match="closed"):
            await h.add_parent(digest, 3, "127.0.0.2:1", "127.0.0.2:1")
        assert made
        assert made[0].sent == []  # no INTERESTED on a closed link
        assert not h.request("127.0.0.2:1", digest, 0)
        await h.close()
