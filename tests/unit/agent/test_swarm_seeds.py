"""The seeding books: which blobs are announced, with or without their piece hashes, and
who is blamed for a blob that failed its digest."""

from __future__ import annotations

from shoal.agent.swarm.seeds import Announcement, Blame, SeedBook
from shoal.core.digest import Digest
from shoal.p2p.pieces import PieceGeometry

MiB = 1 << 20
ME = "me:1"
A, B, C = (Digest.of(x) for x in (b"a", b"b", b"c"))
G = PieceGeometry.of(3 * MiB)


def book(max_seeding: int = 2) -> SeedBook:
    return SeedBook(me=ME, max_seeding=max_seeding, avoid_for=600.0)


class TestSeeding:
    """The most recent max_seeding blobs still in the cache are announced, each periodically."""

    def test_the_oldest_blob_stops_seeding_past_the_limit(self) -> None:
        b = book(max_seeding=2)
        for d in (A, B, C):
            assert b.cached(d, G) == Announcement(d, G)
        assert [a.digest for a in b.due(lambda d: True)] == [B, C]

    def test_an_evicted_blob_stops_seeding(self) -> None:
        b = book()
        b.cached(A, G)
        b.cached(B, G)
        assert [a.digest for a in b.due(lambda d: d != A)] == [B]
        assert [a.digest for a in b.due(lambda d: True)] == [B]  # gone for good


class TestHashPublication:
    """A fallback lease holder publishes its hashes with the first announcement only; any
    announcement answered by a scheduler short of hashes publishes them."""

    def test_a_blob_fetched_under_a_fallback_lease_announces_its_hashes_once(self) -> None:
        b = book()
        b.fallen_back(A)
        assert b.cached(A, G) == Announcement(A, G, with_hashes=True)
        assert b.due(lambda d: True) == [Announcement(A, G)]

    def test_a_scheduler_short_of_hashes_gets_them(self) -> None:
        plain, full = Announcement(A, G), Announcement(A, G, with_hashes=True)
        assert plain.needs_hashes(hashes_known=G.count - 1)
        assert not plain.needs_hashes(hashes_known=G.count)
        assert not full.needs_hashes(hashes_known=0)  # sent already


class TestBlame:
    """The holders whose hashes checked a blob answer for it until it is verified."""

    def test_a_rejected_blob_blames_its_holders_but_never_us(self) -> None:
        b = book()
        b.supplied(A, G, {"f1", ME})
        assert b.rejected(A, now=100.0) == Blame(G, ("f1",), 700.0)
        assert b.rejected(A, now=100.0) is None  # blamed once

    def test_a_blob_from_our_own_fetch_blames_nobody(self) -> None:
        b = book()
        b.supplied(A, G, {ME})
        assert b.rejected(A, now=0.0) is None

    def test_a_verified_blob_clears_the_books(self) -> None:
        b = book()
        b.supplied(A, G, {"f1"})
        b.cached(A, G)
        assert b.rejected(A, now=0.0) is None
