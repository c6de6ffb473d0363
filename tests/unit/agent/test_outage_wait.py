"""How long one request waits for the registry (``RegistryWait``), on a fake clock."""

from __future__ import annotations

import pytest

from shoal.oci.registry_wait import RegistryWait, Step, WaitLimits

LIMITS = WaitLimits(header_timeout=5.0, answer_timeout=300.0)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sent(hung: bool = False, limits: WaitLimits = LIMITS) -> tuple[RegistryWait, FakeClock]:
    clock = FakeClock()
    wait = RegistryWait(limits, hung, clock)
    assert wait.next() == (Step.SEND, 0.0)
    wait.sent()
    return wait, clock


class TestRegistryUp:
    """The short bound applies only when something held can answer instead."""

    def test_waits_the_short_bound_then_asks_what_is_held(self) -> None:
        wait, clock = sent()
        assert wait.next() == (Step.WAIT, 5.0)
        clock.now += 2.0
        assert wait.next() == (Step.WAIT, 3.0)
        clock.now += 3.0
        assert wait.next() == (Step.ASK_HELD, 0.0)

    def test_held_is_served_after_the_short_bound(self) -> None:
        wait, clock = sent()
        clock.now += 5.0
        wait.learnt(True)
        assert wait.next() == (Step.SERVE_HELD, 0.0)

    def test_a_slow_registry_is_waited_for_when_nothing_is_held(self) -> None:
        wait, clock = sent()
        clock.now += 5.0
        wait.learnt(False)
        assert wait.next() == (Step.WAIT, 295.0)  # the same request, no second one
        clock.now += 290.0
        step, seconds = wait.next()
        assert step is Step.WAIT
        assert seconds == pytest.approx(5.0)
        clock.now += 5.0
        assert wait.next() == (Step.GIVE_UP, 0.0)

    def test_held_known_before_the_short_bound_still_waits_it(self) -> None:
        wait, clock = sent()
        wait.learnt(True)
        clock.now += 1.0
        assert wait.next() == (Step.WAIT, 4.0)

    def test_no_short_bound_configured_waits_the_long_one(self) -> None:
        wait, clock = sent(limits=WaitLimits(None, 60.0))
        assert wait.next() == (Step.WAIT, 60.0)
        clock.now += 60.0
        assert wait.next() == (Step.GIVE_UP, 0.0)


class TestRegistryMarkedHung:
    """Held content does not wait again; anything else is still asked of the registry."""

    def test_held_is_served_without_a_request(self) -> None:
        wait = RegistryWait(LIMITS, True, FakeClock())
        assert wait.next() == (Step.ASK_HELD, 0.0)
        wait.learnt(True)
        assert wait.next() == (Step.SERVE_HELD, 0.0)
        assert wait.sent_at is None

    def test_not_held_is_sent_and_waited_for_long(self) -> None:
        clock = FakeClock()
        wait = RegistryWait(LIMITS, True, clock)
        assert wait.next() == (Step.ASK_HELD, 0.0)
        wait.learnt(False)
        assert wait.next() == (Step.SEND, 0.0)
        wait.sent()
        assert wait.next() == (Step.WAIT, 300.0)
        clock.now += 300.0
        assert wait.next() == (Step.GIVE_UP, 0.0)

    @pytest.mark.parametrize("held", [True, False])
    def test_not_marked_hung_sends_first(self, held: bool) -> None:
        wait = RegistryWait(LIMITS, False, FakeClock())
        wait.learnt(held)
        assert wait.next() == (Step.SEND, 0.0)
