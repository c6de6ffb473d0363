"""The peer hub's admission policy, pure: per address, per identity and in total."""

from __future__ import annotations

import pytest

from shoal.p2p.wire.admission import Admission, AdmissionLimits


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def admission(**limits: int | float) -> tuple[Admission, Clock]:
    clock = Clock()
    return Admission(AdmissionLimits(**limits), clock), clock  # type: ignore[arg-type]


class TestHandshakes:
    def test_one_address_never_takes_the_whole_budget(self) -> None:
        a, _ = admission(max_handshakes=8, handshakes_per_address=2)
        assert [a.begin_handshake("10.0.0.1") for _ in range(3)][:2] == [None, None]
        assert a.begin_handshake("10.0.0.1") is not None
        assert all(a.begin_handshake(f"10.0.0.{i}") is None for i in range(2, 8))  # 2 + 6 = 8
        assert "handshakes in progress" in (a.begin_handshake("10.0.0.9") or "")
        a.end_handshake("10.0.0.1")
        assert a.begin_handshake("10.0.0.9") is None

    def test_rate_per_address(self) -> None:
        a, clock = admission(handshake_rate=2.0, handshake_burst=3, handshakes_per_address=100)
        for _ in range(3):
            assert a.begin_handshake("10.0.0.1") is None
            a.end_handshake("10.0.0.1")
        assert "a second" in (a.begin_handshake("10.0.0.1") or "")
        assert a.begin_handshake("10.0.0.2") is None  # another address has its own bucket
        clock.now += 0.5
        assert a.begin_handshake("10.0.0.1") is None  # one token back after half a second

    def test_forgotten_addresses_are_bounded(self) -> None:
        a, _ = admission(tracked_addresses=10)
        for i in range(100):
            assert a.begin_handshake(f"10.0.{i}.1") is None
            a.end_handshake(f"10.0.{i}.1")
        assert len(a._buckets) == 10
        assert a.handshakes == 0
        assert not a._handshakes


class TestLinks:
    def test_per_identity_and_per_address(self) -> None:
        a, _ = admission(links_per_address=3, links_per_identity=2)
        assert a.admit("10.0.0.1", "node-a") is None
        assert a.admit("10.0.0.1", "node-a") is None
        assert "node-a already has 2" in (a.admit("10.0.0.1", "node-a") or "")
        assert a.admit("10.0.0.1", "node-b") is None
        assert "10.0.0.1 already has 3" in (a.admit("10.0.0.1", "node-c") or "")
        a.release("10.0.0.1", "node-a")
        assert a.admit("10.0.0.1", "node-c") is None

    def test_inbound_links_leave_room_for_our_own_dials(self) -> None:
        a, _ = admission(max_links=8, links_per_address=100, links_per_identity=100)
        admitted = sum(a.admit(f"10.0.0.{i}", f"n{i}") is None for i in range(20))
        assert admitted == 8 - a.limits.outbound_reserve == 6
        for _ in range(2):
            assert a.may_dial() is None
            a.outbound += 1
        assert a.may_dial() is not None

    @pytest.mark.parametrize("field", ["max_links", "links_per_address", "handshake_rate"])
    def test_limits_must_be_positive(self, field: str) -> None:
        with pytest.raises(ValueError, match=field):
            AdmissionLimits(**{field: 0})
