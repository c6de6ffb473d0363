"""What the agent tells the scheduler beyond any one download (pure, no I/O).

- **Seeding.** A blob complete here is announced at once and again every
  ``seed_announce_interval`` while it stays in the cache; the ``max_seeding`` most recent
  blobs at most.
- **Hash publication.** A blob fetched from the origin under a fallback lease publishes its
  piece hashes with its first announcement (the scheduler takes them from such a peer); any
  announcement whose answer shows a scheduler without the hashes (a restart, a failover)
  publishes them, once: they were checked against the blob's digest.
- **Lying hashes.** Until a blob is verified, the lease holders whose hashes its pieces were
  checked by answer for it: if the blob fails its digest, they are avoided for
  ``avoid_for`` seconds and reported (our own origin fetch is the registry's fault).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from shoal.core.digest import Digest
from shoal.p2p.pieces import PieceGeometry


@dataclass(frozen=True, slots=True)
class Announcement:
    """Report the blob complete; ``with_hashes``: with its piece hashes."""

    digest: Digest
    geometry: PieceGeometry
    with_hashes: bool = False

    def needs_hashes(self, hashes_known: int) -> bool:
        """Whether the scheduler's answer to this announcement shows it lacks hashes we did
        not send."""
        return not self.with_hashes and hashes_known < self.geometry.count


@dataclass(frozen=True, slots=True)
class Blame:
    """Peers whose hashes made a blob that failed its digest: avoid them until ``until``,
    and report them (``bad_hashes``)."""

    geometry: PieceGeometry
    peers: tuple[str, ...]
    until: float


class SeedBook:
    """The agent's seeding books (one per agent, event loop only)."""

    def __init__(self, *, me: str, max_seeding: int, avoid_for: float) -> None:
        self.me = me
        self.max_seeding = max_seeding
        self.avoid_for = avoid_for
        self.seeding: OrderedDict[Digest, PieceGeometry] = OrderedDict()
        self.suppliers: dict[Digest, tuple[PieceGeometry, frozenset[str]]] = {}
        """blob -> (geometry, holders whose hashes it was checked by), until it is verified"""
        self.fell_back: set[Digest] = set()
        """blobs fetched from the origin under a fallback lease, not yet announced"""

    def supplied(self, digest: Digest, geometry: PieceGeometry, holders: Iterable[str]) -> None:
        """A download ended (complete or not) having used these holders' hashes."""
        holders = frozenset(holders)
        if holders:
            self.suppliers[digest] = (geometry, holders)

    def fallen_back(self, digest: Digest) -> None:
        """The rest of this blob comes from the origin under a fallback lease."""
        self.fell_back.add(digest)

    def cached(self, digest: Digest, geometry: PieceGeometry) -> Announcement:
        """The blob is complete and verified here: seed it; the announcement to make now."""
        self.suppliers.pop(digest, None)
        self.seeding[digest] = geometry
        self.seeding.move_to_end(digest)
        while len(self.seeding) > self.max_seeding:
            self.seeding.popitem(last=False)
        with_hashes = digest in self.fell_back
        self.fell_back.discard(digest)
        return Announcement(digest, geometry, with_hashes)

    def rejected(self, digest: Digest, now: float) -> Blame | None:
        """The blob failed its digest: whom to blame (None: nobody but the registry)."""
        geometry, holders = self.suppliers.pop(digest, (PieceGeometry.of(0), frozenset()))
        peers = tuple(sorted(holders - {self.me}))
        if not peers:
            return None
        return Blame(geometry, peers, now + self.avoid_for)

    def due(self, held: Callable[[Digest], bool]) -> list[Announcement]:
        """The periodic announcements; blobs no longer ``held`` in the cache stop seeding."""
        for digest in [d for d in self.seeding if not held(d)]:
            del self.seeding[digest]
        return [Announcement(d, g) for d, g in self.seeding.items()]
