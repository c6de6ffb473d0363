"""The registry breaker, the grace rule and the once-per-outage stale log, on a fake clock."""

from __future__ import annotations

import pytest

from shoal.agent.outage import RegistryBreaker, StaleLog, may_serve_stale


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class TestMayServeStale:
    """A confirmation covers a stale answer only within the grace; grace 0 is off."""

    @pytest.mark.parametrize(
        ("confirmed_at", "now", "grace", "expected"),
        [
            (None, 100.0, 3600.0, False),
            (100.0, 100.0, 3600.0, True),
            (100.0, 3700.0, 3600.0, True),
            (100.0, 3700.1, 3600.0, False),
            (100.0, 100.0, 0.0, False),
            (130.0, 100.0, 3600.0, True),  # a peer's clock a little ahead
            (1000.0, 100.0, 3600.0, False),  # far in the future: not believed
        ],
    )
    def test_table(self, confirmed_at: float | None, now: float, grace: float, expected: bool) -> None:
        assert may_serve_stale(confirmed_at, now, grace) is expected


class TestRegistryBreaker:
    """Fast failures keep asking the registry; a hung one is left alone until a probe answers."""

    def test_up_admits_everything(self) -> None:
        breaker = RegistryBreaker("reg", 2.0, FakeClock())
        assert [breaker.marked_hung() for _ in range(3)] == [None, None, None]
        assert not breaker.down
        assert not breaker.probe_due()

    def test_refused_is_down_but_still_asked(self) -> None:
        breaker = RegistryBreaker("reg", 2.0, FakeClock())
        breaker.failed("connection refused")
        assert breaker.down
        assert breaker.outages == 1
        assert breaker.marked_hung() is None  # costs milliseconds; its first answer ends the outage
        assert not breaker.probe_due()
        breaker.answered()
        assert not breaker.down

    def test_hung_refuses_until_a_probe_answers(self) -> None:
        clock = FakeClock()
        breaker = RegistryBreaker("reg", 2.0, clock)
        breaker.failed("no answer within 5s", hung=True)
        refusal = breaker.marked_hung()
        assert refusal is not None
        assert "no answer within 5s" in refusal
        assert not breaker.probe_due()
        clock.now += 2.0
        assert breaker.probe_due()
        assert not breaker.probe_due()  # one probe per interval
        breaker.failed("no answer within 5s", hung=True)  # the probe hung too
        assert breaker.outages == 1
        assert breaker.marked_hung() is not None
        clock.now += 2.0
        assert breaker.probe_due()
        breaker.answered()
        assert breaker.marked_hung() is None
        assert not breaker.down

    def test_outages_are_numbered(self) -> None:
        breaker = RegistryBreaker("reg", 2.0, FakeClock())
        breaker.failed("answered 503")
        breaker.failed("answered 503")
        breaker.answered()
        breaker.failed("connection reset")
        assert breaker.outages == 2


class TestStaleLog:
    """One line per image per outage; the listing shows the current outage only."""

    def test_once_per_image_per_outage(self) -> None:
        log = StaleLog(FakeClock())
        assert log.served("reg", "team/app", "v1", "sha256:a", 1, "refused") is True
        assert log.served("reg", "team/app", "v1", "sha256:a", 1, "refused") is False
        assert log.served("reg", "team/db", "v1", "sha256:b", 1, "refused") is True
        assert log.served("reg", "team/app", "v1", "sha256:a", 2, "refused") is True
        listed = log.current(lambda registry: 2)
        assert [(i.repository, i.count) for i in listed] == [("team/app", 1)]
        assert log.current(lambda registry: None) == []
