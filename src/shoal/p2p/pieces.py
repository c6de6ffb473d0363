"""Cutting a blob into pieces: the piece size rule and index/offset arithmetic.

:class:`PieceGeometry` is the one value a download computes from the blob's size and passes
on (to its pure state, its I/O and the partial file's piece hashing); the free functions
below remain for code that holds a size and a piece size of someone else's (a scheduler
checking what an agent sent).
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIN_PIECE = 1 << 20
MAX_PIECE = 16 << 20
TARGET_PIECES = 64


def choose_piece_size(size: int) -> int:
    """A power of two near ``size / 64``, clamped to 1..16 MiB.

    Small pieces pipeline better (a child can start on piece 0 as soon as the fetcher has
    it); large pieces cost fewer requests, piece-map updates and hash reports. Dragonfly uses
    next_pow2(size/500) in 4..64 MiB, Kraken a flat 4 MB. On the 20-node shaped fleet
    (``bench/fleet``, 128 MiB layers) 1 MiB pieces (size/128) spent the agents' CPU on
    per-piece work; the move to 4 MiB came with the threaded piece client, and the two
    together took that rollout from 195 s to 144 s (not measured apart). Each hop of the
    swarm stores and forwards a whole piece over uploads shared by many links, so a piece's
    way through a large fleet is several piece times long: ``bench.simulate`` at 1,000
    nodes with 128 MiB layers took 2 MiB pieces (size/64) sooner than 4 MiB or 1 MiB
    (``docs/fleet-benchmark.md``). Every agent and the scheduler must share this rule: the
    scheduler refuses, and peers reject, another piece size.
    """
    if size <= MIN_PIECE:
        return MIN_PIECE
    target = max(1, size // TARGET_PIECES)
    power = 1 << (target - 1).bit_length()
    return max(MIN_PIECE, min(MAX_PIECE, power))


def piece_count(size: int, piece_size: int) -> int:
    return max(1, -(-size // piece_size)) if size else 0


def piece_span(index: int, size: int, piece_size: int) -> tuple[int, int]:
    """(offset, length) of piece ``index``."""
    offset = index * piece_size
    if index < 0 or offset >= size:
        raise ValueError(f"piece {index} outside a blob of {size} bytes")
    return offset, min(piece_size, size - offset)


@dataclass(frozen=True, slots=True)
class PieceGeometry:
    """How one blob is cut: its size, its piece size and how many pieces that makes.

    ``PieceGeometry.of(size)`` applies the swarm's rule (:func:`choose_piece_size`); the
    constructor takes any piece size (tests, a simulator trying another rule).
    """

    size: int
    piece_size: int
    count: int = field(init=False)

    def __post_init__(self) -> None:
        if self.size < 0 or self.piece_size <= 0:
            raise ValueError(f"no pieces of {self.piece_size} bytes in a blob of {self.size} bytes")
        object.__setattr__(self, "count", piece_count(self.size, self.piece_size))

    @classmethod
    def of(cls, size: int) -> PieceGeometry:
        """The swarm's geometry of a blob of ``size`` bytes."""
        return cls(size, choose_piece_size(size))

    def span(self, index: int) -> tuple[int, int]:
        """(offset, length) of piece ``index``; ValueError outside the blob."""
        return piece_span(index, self.size, self.piece_size)

    def offset(self, index: int) -> int:
        return self.span(index)[0]

    def length(self, index: int) -> int:
        return self.span(index)[1]

    def pieces_within(self, prefix: int) -> int:
        """How many whole pieces a prefix of ``prefix`` bytes holds (all of them at the end)."""
        if prefix >= self.size:
            return self.count
        return max(0, prefix) // self.piece_size
