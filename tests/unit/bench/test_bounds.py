"""The Kumar-Ross lower bound: each term binds where it should."""

from __future__ import annotations

import pytest
from bench.fleet.bounds import kumar_ross, kumar_ross_uniform

MIB = 1 << 20
M = 1_000_000


class TestUniform:
    """A fleet of equal nodes."""

    def test_origin_bound_when_origin_is_slowest(self) -> None:
        bound = kumar_ross_uniform(512 * MIB, 20, 50 * M, 200 * M)
        assert bound.binding == "origin"
        assert bound.seconds == pytest.approx(512 * MIB * 8 / (50 * M))

    def test_download_bound_with_equal_caps(self) -> None:
        # N*F/(u_s + N*u) = 20F/(21u) < F/u: the node's own download binds.
        bound = kumar_ross_uniform(512 * MIB, 20, 200 * M, 200 * M)
        assert bound.binding in {"origin", "download"}
        assert bound.seconds == pytest.approx(512 * MIB * 8 / (200 * M))
        assert bound.upload_term == pytest.approx(20 * 512 * MIB * 8 / (21 * 200 * M))

    def test_upload_bound_when_nodes_upload_little(self) -> None:
        bound = kumar_ross(100 * MIB, 1000 * M, [10 * M] * 10, [1000 * M] * 10)
        assert bound.binding == "upload"
        assert bound.seconds == pytest.approx(10 * 100 * MIB * 8 / (1000 * M + 100 * M))

    @pytest.mark.parametrize("nodes", [5, 10, 20, 40])
    def test_direct_pull_time_is_n_times_the_bound(self, nodes: int) -> None:
        bound = kumar_ross_uniform(64 * MIB, nodes, 200 * M, 200 * M)
        direct = nodes * 64 * MIB * 8 / (200 * M)
        assert direct / bound.seconds == pytest.approx(nodes)


class TestHeterogeneous:
    """Slow nodes lower the download term's rate and the sum of uploads."""

    def test_slowest_download_binds(self) -> None:
        ups = [200 * M] * 15 + [50 * M] * 5
        bound = kumar_ross(512 * MIB, 200 * M, ups, ups)
        assert bound.binding == "download"
        assert bound.seconds == pytest.approx(512 * MIB * 8 / (50 * M))

    def test_sum_of_uploads(self) -> None:
        ups = [100 * M, 300 * M]
        bound = kumar_ross(MIB, 1 * M, ups, [10_000 * M] * 2)
        assert bound.upload_term == pytest.approx(2 * MIB * 8 / (401 * M))


class TestValidation:
    """Nonsense inputs are refused rather than giving a bound of zero or infinity."""

    @pytest.mark.parametrize(
        ("size", "origin", "ups", "downs"),
        [
            (-1, M, [M], [M]),
            (1, 0, [M], [M]),
            (1, M, [M], [0]),
            (1, M, [M, M], [M]),
            (1, M, [], []),
        ],
    )
    def test_rejects(self, size: int, origin: int, ups: list[int], downs: list[int]) -> None:
        with pytest.raises(ValueError, match=r"."):
            kumar_ross(size, origin, ups, downs)
