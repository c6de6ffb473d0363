"""``PeerHub``'s serving side in the simulator: what an agent tells and sends its children.

This is a copy of ``shoal.agent.peer_hub.PeerHub``'s rules (no pure core holds them yet):
the bitfield for an interested child, one HAVE per piece announced, requests answered from
verified pieces only, superseeding while this node fetches the blob from the origin (a piece
accepted for ``superseed_copies`` children is refused to more), and every refused piece
announced again when superseeding stops or the blob is complete.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

HaveSender = Callable[[int, str, list[int]], None]
"""(child, digest, pieces): send HAVEs to a child"""


@dataclass(slots=True)
class _Blob:
    told: dict[int, set[int]] = field(default_factory=dict)
    """child -> pieces it heard of"""
    refused: dict[int, set[int]] = field(default_factory=dict)
    copies: dict[int, int] | None = None
    """superseeding: piece -> children it was accepted for"""


class Serving:
    """One agent's serving books (``held``: the verified pieces of each blob, owned by the agent)."""

    def __init__(self, me: str, held: dict[str, set[int]], send_have: HaveSender, superseed_copies: int) -> None:
        self.me = me
        self.held = held
        self.send_have = send_have
        self.superseed_copies = superseed_copies
        self.blobs: dict[str, _Blob] = {}
        self.complete: set[str] = set()

    def interested(self, child: int, digest: str) -> frozenset[int]:
        """A child's INTERESTED: the bitfield to send it."""
        pieces = frozenset(self.held.get(digest, ()))
        self.blobs.setdefault(digest, _Blob()).told[child] = set(pieces)
        return pieces

    def not_interested(self, child: int, digest: str) -> None:
        blob = self.blobs.get(digest)
        if blob is not None:
            blob.told.pop(child, None)
            blob.refused.pop(child, None)

    def announce(self, digest: str, indices: Iterable[int]) -> None:
        """Pieces verified here (``AnnouncePieces``): one HAVE each to every child not told yet."""
        blob = self.blobs.get(digest)
        if blob is None:
            return
        indices = tuple(indices)
        for child, told in blob.told.items():
            fresh = [i for i in indices if i not in told]
            if fresh:
                told.update(fresh)
                self.send_have(child, digest, fresh)

    def superseed(self, digest: str) -> None:
        blob = self.blobs.setdefault(digest, _Blob())
        if blob.copies is None:
            blob.copies = {}

    def stop_superseeding(self, digest: str) -> None:
        """The origin fetch ended without the blob: refused pieces are the children's to ask again."""
        blob = self.blobs.get(digest)
        if blob is None or blob.copies is None:
            return
        blob.copies = None
        held = self.held.get(digest, set())
        for child, refused in list(blob.refused.items()):
            told = blob.told.get(child)
            if told is None:
                continue
            fresh = sorted(i for i in refused if i in held and i not in told)
            told.update(fresh)
            if fresh:
                self.send_have(child, digest, fresh)
        blob.refused.clear()

    def blob_complete(self, digest: str, count: int) -> None:
        """Every piece is here: announce what children were refused or not yet told."""
        self.complete.add(digest)
        blob = self.blobs.get(digest)
        if blob is None:
            return
        blob.copies = None
        for child, told in blob.told.items():
            refused = blob.refused.pop(child, set())
            fresh = [i for i in range(count) if i not in told or i in refused]
            told.update(fresh)
            if fresh:
                self.send_have(child, digest, fresh)

    def accept(self, child: int, digest: str, index: int) -> bool:
        """A child's REQUEST: whether to send the piece (False: REJECT)."""
        blob = self.blobs.setdefault(digest, _Blob())
        if index not in self.held.get(digest, ()):
            self._refuse(blob, child, index)
            return False
        copies = None if digest in self.complete else blob.copies
        if copies is not None:
            if copies.get(index, 0) >= self.superseed_copies:
                self._refuse(blob, child, index)
                return False
            # counted when accepted, not when sent (as the hub does)
            copies[index] = copies.get(index, 0) + 1
        return True

    @staticmethod
    def _refuse(blob: _Blob, child: int, index: int) -> None:
        blob.refused.setdefault(child, set()).add(index)
        told = blob.told.get(child)
        if told is not None:
            told.discard(index)

    def dropped(self, digest: str, index: int) -> None:
        """A piece accepted for a child was cancelled before it left: another child may have it."""
        blob = self.blobs.get(digest)
        if blob is not None and blob.copies is not None and blob.copies.get(index, 0) > 0:
            blob.copies[index] -= 1
