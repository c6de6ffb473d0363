"""Rendezvous hashing of blobs over schedulers."""

from __future__ import annotations

from collections import Counter

import pytest

from shoal.p2p.rendezvous import rank_schedulers

SCHEDULERS = ["http://10.0.0.1:8002", "http://10.0.0.2:8002", "http://10.0.0.3:8002"]
DIGESTS = [f"sha256:{i:064x}" for i in range(3000)]


class TestRank:
    """Deterministic, balanced, and minimally disrupted when a scheduler goes away."""

    def test_deterministic_and_order_independent(self) -> None:
        for digest in DIGESTS[:50]:
            ranked = rank_schedulers(digest, SCHEDULERS)
            assert sorted(ranked) == sorted(SCHEDULERS)
            assert rank_schedulers(digest, list(reversed(SCHEDULERS))) == ranked
            assert rank_schedulers(digest, SCHEDULERS) == ranked

    def test_balanced(self) -> None:
        owners = Counter(rank_schedulers(d, SCHEDULERS)[0] for d in DIGESTS)
        for url in SCHEDULERS:
            assert 0.25 < owners[url] / len(DIGESTS) < 0.42, owners

    @pytest.mark.parametrize("gone", SCHEDULERS)
    def test_removing_one_moves_only_its_digests(self, gone: str) -> None:
        rest = [url for url in SCHEDULERS if url != gone]
        moved = 0
        for digest in DIGESTS:
            before = rank_schedulers(digest, SCHEDULERS)
            after = rank_schedulers(digest, rest)
            if before[0] != gone:
                assert after[0] == before[0]
            else:
                moved += 1
                assert after[0] == before[1]  # its own second choice: spread over the survivors
            assert after == [url for url in before if url != gone]
        assert moved > 0

    def test_edge_cases(self) -> None:
        assert rank_schedulers(DIGESTS[0], []) == []
        assert rank_schedulers(DIGESTS[0], ["http://a", "http://a"]) == ["http://a"]
