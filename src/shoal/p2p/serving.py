"""What a node tells and sends the children of its links: the serving rules, pure.

A child hears of a piece once: in the bitfield it gets for saying it is interested, or in
one HAVE when the piece is verified here (:meth:`ServingBook.announce`). Only verified
pieces are sent. While this node fetches a blob from the origin (superseeding), a piece
already accepted for ``superseed_copies`` children is refused to more: they take it from
those children, and the fetcher's upload carries new pieces instead of the same ones again.
When the fetch ends (the blob is complete, or the lease moved), every refused piece is
announced again. A copy cancelled before it left frees its place, and so do the copies of a
child whose link closed (a node that died must not hold a piece's places until the fetch
ends); a refused child hears of a freed place only when it asks again. A blob whole here (the
owner's store says so) is served to whoever asks, whatever the book heard.

The book holds no I/O: its methods return the HAVEs to send, as ``(child, pieces)`` pairs,
and the owner (``PeerHub`` in the agent, the simulator's agent) sends them. Children are
whatever the owner tells them apart by (a link, a node number).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

Haves = list[tuple[Hashable, list[int]]]
"""(child, pieces): one HAVE per piece to send to that child"""


@dataclass(slots=True)
class _Blob:
    told: dict[Hashable, set[int]] = field(default_factory=dict)
    """child -> pieces it heard of"""
    refused: dict[Hashable, set[int]] = field(default_factory=dict)
    copies: dict[int, set[Hashable]] | None = None
    """superseeding: piece -> the children it was accepted for"""

    def idle(self) -> bool:
        """Nothing to remember: no child told or refused, not superseeding."""
        return not self.told and not self.refused and self.copies is None


class ServingBook:
    """One node's serving books, over all its blobs and children."""

    def __init__(self, *, superseed_copies: int) -> None:
        self.superseed_copies = superseed_copies
        self.blobs: dict[str, _Blob] = {}

    def interested(self, child: Hashable, digest: str, held: Iterable[int]) -> frozenset[int]:
        """A child's INTERESTED: the bitfield to send it (``held``: the verified pieces here)."""
        pieces = frozenset(held)
        self.blobs.setdefault(digest, _Blob()).told[child] = set(pieces)
        return pieces

    def not_interested(self, child: Hashable, digest: str) -> None:
        """The child stopped (NOT_INTERESTED, or its link closed)."""
        blob = self.blobs.get(digest)
        if blob is not None:
            blob.told.pop(child, None)
            blob.refused.pop(child, None)
            self._prune(digest, blob)

    def gone(self, child: Hashable) -> None:
        """The child's link closed: forget it for every blob, and free the places its
        copies held."""
        for digest, blob in list(self.blobs.items()):
            blob.told.pop(child, None)
            blob.refused.pop(child, None)
            for holders in (blob.copies or {}).values():
                holders.discard(child)
            self._prune(digest, blob)

    def announce(self, digest: str, indices: Iterable[int]) -> Haves:
        """Pieces verified here: one HAVE each to every interested child not told yet."""
        blob = self.blobs.get(digest)
        if blob is None or not blob.told:
            return []
        indices = tuple(indices)
        out: Haves = []
        for child, told in blob.told.items():
            fresh = [i for i in indices if i not in told]
            if fresh:
                told.update(fresh)
                out.append((child, fresh))
        return out

    def superseed(self, digest: str) -> None:
        """This node fetches ``digest`` from the origin: limit the copies of each new piece."""
        blob = self.blobs.setdefault(digest, _Blob())
        if blob.copies is None:
            blob.copies = {}

    def stop_superseeding(self, digest: str, holds: Callable[[int], bool]) -> Haves:
        """The origin fetch ended without the blob (the lease moved): what children were
        refused and we hold is theirs to ask for again."""
        blob = self.blobs.get(digest)
        if blob is None or blob.copies is None:
            return []
        blob.copies = None
        out: Haves = []
        for child, refused in blob.refused.items():
            told = blob.told.get(child)
            if told is None:
                continue
            fresh = sorted(i for i in refused if holds(i) and i not in told)
            if fresh:
                told.update(fresh)
                out.append((child, fresh))
        blob.refused.clear()
        self._prune(digest, blob)
        return out

    def blob_complete(self, digest: str, count: int) -> Haves:
        """Every piece is here: announce what children were refused or not yet told."""
        blob = self.blobs.get(digest)
        if blob is None:
            return []
        blob.copies = None
        out: Haves = []
        for child, told in blob.told.items():
            refused = blob.refused.pop(child, set())
            fresh = [i for i in range(count) if i not in told or i in refused]
            if fresh:
                told.update(fresh)
                out.append((child, fresh))
        self._prune(digest, blob)
        return out

    def accept(self, child: Hashable, digest: str, index: int, *, held: bool, complete: bool = False) -> bool:
        """A child's REQUEST of a piece (``held``: verified here; ``complete``: the whole blob
        is here, as the owner's store says): whether to send it; False: refuse it (REJECT),
        and the child hears of it again when superseeding ends."""
        if not held:
            self.refuse(child, digest, index)
            return False
        blob = self.blobs.get(digest)
        copies = None if blob is None or complete else blob.copies
        if copies is not None:
            holders = copies.setdefault(index, set())
            if child not in holders and len(holders) >= self.superseed_copies:
                self.refuse(child, digest, index)
                return False
            # counted when accepted, not when sent: a piece takes a while to leave on a slow
            # link, and every child asks for the newest piece at once
            holders.add(child)
        return True

    def refuse(self, child: Hashable, digest: str, index: int) -> None:
        """A request refused (also for a reason of the owner's, such as a full send queue)."""
        blob = self.blobs.setdefault(digest, _Blob())
        blob.refused.setdefault(child, set()).add(index)
        told = blob.told.get(child)
        if told is not None:
            told.discard(index)

    def dropped(self, child: Hashable, digest: str, index: int) -> None:
        """A copy accepted for ``child`` was cancelled before it left: another child may have it."""
        blob = self.blobs.get(digest)
        if blob is not None and blob.copies is not None and index in blob.copies:
            blob.copies[index].discard(child)

    def _prune(self, digest: str, blob: _Blob) -> None:
        if blob.idle():
            del self.blobs[digest]
