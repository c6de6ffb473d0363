"""The piece buffer pool over an agent's life: blob after blob, not one download."""

from __future__ import annotations

from shoal.agent.piece_buffers import PieceBuffers

PIECE = 4096
"""a piece size, scaled down (4 KiB for 4 MiB, the bound below for the 64 MiB default)"""


def pull(pool: PieceBuffers, pieces: int, tail: int, tail_at: int, window: int = 4) -> int:
    """One blob's pieces read into the pool's buffers, ``window`` of them awaiting their
    write at a time, each given back once written; the buffers reused meanwhile. The last
    piece is ``tail`` bytes long and arrives ``tail_at``-th (pieces come in any order)."""
    lengths = [PIECE] * pieces
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
    pool = PieceBuffers(max_bytes=16 * PIECE)
    for blob in range(40):
        tail = 1 + (blob * 1543 + 777) % PIECE
        pull(pool, 24, tail, tail_at=blob * 7 % 24)
    assert pull(pool, 24, PIECE // 2, tail_at=12) >= 20
