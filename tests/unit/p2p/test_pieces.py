"""Piece size rule, piece arithmetic, and the wire protocol's bitfields and JSON shapes."""

from __future__ import annotations

import pytest

from shoal.p2p.pieces import MAX_PIECE, MIN_PIECE, PieceGeometry, choose_piece_size, piece_count, piece_span
from shoal.p2p.protocol import PeerInfo, Report, TaskView, from_json, to_json

MiB = 1 << 20


class TestPieceSize:
    """Powers of two near size/64, between 1 and 16 MiB."""

    @pytest.mark.parametrize(
        ("size", "expected"),
        [
            (0, MIN_PIECE),
            (1, MIN_PIECE),
            (10 * MiB, MIN_PIECE),
            (32 * MiB, MIN_PIECE),
            (64 * MiB, MIN_PIECE),
            (65 * MiB, 2 * MiB),
            (128 * MiB, 2 * MiB),
            (512 * MiB, 8 * MiB),
            (1024 * MiB, MAX_PIECE),
            (100 * 1024 * MiB, MAX_PIECE),
        ],
    )
    def test_table(self, size: int, expected: int) -> None:
        assert choose_piece_size(size) == expected

    def test_power_of_two_and_bounded(self) -> None:
        for size in range(1, 1 << 40, 987_654_321):
            ps = choose_piece_size(size)
            assert ps & (ps - 1) == 0
            assert MIN_PIECE <= ps <= MAX_PIECE


class TestSpans:
    """Pieces tile the blob exactly; the last one is short."""

    def test_last_piece_is_short(self) -> None:
        size = 5 * MiB + 3
        assert piece_count(size, MiB) == 6
        assert piece_span(5, size, MiB) == (5 * MiB, 3)
        total = sum(piece_span(i, size, MiB)[1] for i in range(6))
        assert total == size

    @pytest.mark.parametrize("index", [-1, 6, 100])
    def test_out_of_range(self, index: int) -> None:
        with pytest.raises(ValueError, match="outside"):
            piece_span(index, 5 * MiB + 3, MiB)


class TestGeometry:
    """One value per blob: the rule's piece size, the count, and spans that tile the blob."""

    @pytest.mark.parametrize("size", [0, 1, MiB, MiB + 1, 33 * MiB, 128 * MiB + 5, 600 * MiB])
    def test_of_follows_the_rule(self, size: int) -> None:
        g = PieceGeometry.of(size)
        assert (g.size, g.piece_size, g.count) == (size, choose_piece_size(size), piece_count(size, g.piece_size))
        assert sum(g.length(i) for i in range(g.count)) == size
        assert [g.offset(i) for i in range(g.count)] == [i * g.piece_size for i in range(g.count)]

    def test_spans_and_bounds(self) -> None:
        g = PieceGeometry(5 * MiB + 3, MiB)
        assert g.count == 6
        assert g.span(5) == (5 * MiB, 3)
        with pytest.raises(ValueError, match="outside"):
            g.span(6)

    @pytest.mark.parametrize(
        ("prefix", "whole"), [(0, 0), (MiB - 1, 0), (MiB, 1), (5 * MiB + 2, 5), (5 * MiB + 3, 6), (10 * MiB, 6)]
    )
    def test_pieces_within_a_prefix(self, prefix: int, whole: int) -> None:
        assert PieceGeometry(5 * MiB + 3, MiB).pieces_within(prefix) == whole

    def test_empty_blob_has_no_pieces(self) -> None:
        g = PieceGeometry.of(0)
        assert g.count == 0
        assert g.pieces_within(0) == 0

    @pytest.mark.parametrize(("size", "piece"), [(-1, MiB), (10, 0)])
    def test_nonsense_is_refused(self, size: int, piece: int) -> None:
        with pytest.raises(ValueError, match="no pieces"):
            PieceGeometry(size, piece)

    def test_is_a_frozen_value(self) -> None:
        assert PieceGeometry.of(3 * MiB) == PieceGeometry(3 * MiB, MIN_PIECE)
        assert hash(PieceGeometry.of(3 * MiB)) == hash(PieceGeometry(3 * MiB, MIN_PIECE))


class TestProtocol:
    """JSON bodies round-trip; ones with unknown or missing fields are refused."""

    def test_report_round_trip_keeps_int_piece_indexes(self) -> None:
        report = Report("p", "127.0.0.2:1", 3, 100, hashes={2: "ab"}, failed_parents=["x"])
        import json

        back = from_json(Report, json.loads(json.dumps(to_json(report))))
        assert back == report

    def test_task_view_parents_are_typed(self) -> None:
        view = TaskView("peer", [PeerInfo("a", "127.0.0.2:1")], 10, 1, 5.0)
        assert from_json(TaskView, to_json(view)).parents[0] == PeerInfo("a", "127.0.0.2:1")

    @pytest.mark.parametrize("body", [[], "x", {"peer_id": "p"}, {"bogus": 1}])
    def test_malformed_bodies(self, body: object) -> None:
        with pytest.raises(ValueError, match="Report"):
            from_json(Report, body)
