"""The piece buffer pool over an agent's life: blob after blob, not one download."""

from __future__ import annotations

from shoal.agent.piece_buffers import PieceBuffers

PIECE = 4096
"""a piece size, scaled down (4 KiB for 4 MiB, the bound below for the 64 MiB default)"""
BOUND = 16 * PIECE


def pull(pool: PieceBuffers, pieces: int, tail: int, tail_at: int, piece: int = PIECE, window: int = 4) -> int:
    """One blob's pieces read into the pool's buffers, ``window`` of them awaiting their
    write at a time, each given back once written; the buffers reused meanwhile. The last
    piece is ``tail`` bytes long and arrives ``tail_at``-th (pieces come in any order)."""
    lengths = [piece] * pieces
    lengths.insert(tail_at, tail)
    before = pool.reused
    held: list[bytearray] = []
    for length in lengths:
        held.append(pool.take(length))
        if len(held) == window:
            pool.give(held.pop(0))
    for buffer in held:
        pool.give(buffer)
    return pool.reused - before


def test_last_pieces_of_pulled_blobs_do_not_crowd_out_the_piece_size_in_use() -> None:
    """Each blob's last piece has a length of its own (the blob's size modulo the piece
    size): given back once written, nobody takes that length again. Forty layers later the
    pieces every blob shares must still find buffers to reuse, not a pool full of last
    pieces that refuses every buffer given back."""
    pool = PieceBuffers(max_bytes=BOUND, min_length=1)
    for blob in range(40):
        tail = 1 + (blob * 1543 + 777) % PIECE
        pull(pool, 24, tail, tail_at=blob * 7 % 24)
    assert pull(pool, 24, PIECE // 2, tail_at=12) >= 20


def test_a_blob_of_another_piece_size_does_not_strand_the_pool() -> None:
    """The piece size goes from 1 to 16 MiB with the blob's size: an image with one large
    layer and smaller ones reads pieces of two sizes. Once the large layer is written, its
    idle buffers must not keep the later layers' pieces from being reused."""
    pool = PieceBuffers(max_bytes=BOUND, min_length=1)
    pull(pool, 24, 3 * PIECE + 5, tail_at=10, piece=4 * PIECE)  # 16 MiB pieces, scaled
    assert pull(pool, 24, PIECE // 2, tail_at=12) >= 20
