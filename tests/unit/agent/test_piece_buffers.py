"""The pool of piece buffers: reuse by length, a bound, and a body that gives back once."""

from __future__ import annotations

from shoal.agent.peer_link import PieceBody
from shoal.agent.piece_buffers import PieceBuffers


def body(pool: PieceBuffers, length: int = 8) -> PieceBody:
    data = pool.take(length)
    data[:] = b"x" * length
    return PieceBody("sha256:" + "0" * 64, 0, data, "h", pool)


def test_a_buffer_given_back_is_taken_again_for_the_same_length() -> None:
    pool = PieceBuffers(min_length=1)
    first = pool.take(8)
    pool.give(first)
    assert pool.take(4) is not first  # another length: a new buffer
    assert pool.take(8) is first
    assert pool.reused == 1
    assert pool.take(8) is not first  # taken already: never handed out twice


def test_idle_buffers_stay_under_the_bound_the_oldest_making_room() -> None:
    pool = PieceBuffers(max_bytes=16, min_length=1)
    a, b, c = pool.take(8), pool.take(8), pool.take(8)
    for buffer in (a, b, c):
        pool.give(buffer)
    assert pool.idle_bytes == 16
    assert {id(pool.take(8)), id(pool.take(8))} == {id(b), id(c)}
    assert pool.take(8) is not a
    assert pool.idle_bytes == 0


def test_a_length_not_asked_for_again_gives_way() -> None:
    pool = PieceBuffers(max_bytes=16, min_length=1)
    last_piece, a, b = pool.take(5), pool.take(8), pool.take(8)
    pool.give(last_piece)
    pool.give(a)
    pool.give(b)  # no room beside the 5 and the first 8: the oldest, the 5, goes
    assert pool.idle_bytes == 16
    assert pool.take(5) is not last_piece


def test_short_bodies_and_buffers_over_the_bound_are_not_kept() -> None:
    pool = PieceBuffers(max_bytes=1 << 20, min_length=64 << 10)
    pool.give(pool.take(4 << 10))
    pool.give(pool.take(2 << 20))
    assert pool.idle_bytes == 0


def test_a_body_gives_its_buffer_back_once() -> None:
    pool = PieceBuffers(min_length=1)
    piece = body(pool)
    buffer = piece.data
    piece.release()
    piece.release()  # a second call does nothing: the buffer is not pooled twice
    assert pool.idle_bytes == 8
    assert piece.data == bytearray()  # a late reader sees no bytes, not another piece's
    assert pool.take(8) is buffer
    assert pool.take(8) is not buffer


def test_a_body_without_a_pool_keeps_its_bytes() -> None:
    piece = PieceBody("sha256:" + "0" * 64, 0, bytearray(b"abc"), "h")
    piece.release()
    assert piece.data == bytearray(b"abc")
