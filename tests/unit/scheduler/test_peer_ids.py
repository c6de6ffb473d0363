"""One node certificate speaks as at most two peer ids at once (a restart on a new port fits)."""

from __future__ import annotations

from shoal.scheduler.peer_ids import PeerIds


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TestPeerIds:
    """A node gets a bounded number of ids; an id unused for the TTL frees its place."""

    def test_a_third_id_is_refused_until_one_goes_quiet(self) -> None:
        clock = Clock()
        ids = PeerIds(limit=2, ttl=30, clock=clock)
        assert ids.admit("node-a", "10.0.0.1:1") is None
        assert ids.admit("node-a", "10.0.0.1:2") is None
        refusal = ids.admit("node-a", "10.0.0.1:3")
        assert refusal is not None
        assert "10.0.0.1:1, 10.0.0.1:2" in refusal
        assert ids.admit("node-a", "10.0.0.1:1") is None  # a known id is always fine
        assert ids.admit("node-b", "10.0.0.2:1") is None  # each node counts alone
        clock.now = 29.0
        assert ids.admit("node-a", "10.0.0.1:1") is None
        clock.now = 31.0  # :2 unused for 31 s, :1 for 2 s
        assert ids.admit("node-a", "10.0.0.1:3") is None
        assert ids.admit("node-a", "10.0.0.1:2") is not None
