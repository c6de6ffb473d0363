"""ConnectionGuard's rules with a fake clock and fake transports: timeouts, eviction, refusal, quiet logs."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from shoal.agent.connections import ConnectionGuard, ConnectionLimits, effective_limit


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guard(clock: Clock, max_connections: int = 3) -> tuple[ConnectionGuard, CollectorRegistry]:
    registry = CollectorRegistry()
    gauge = Gauge("conns", "open", registry=registry)
    closed = Counter("closed", "closed", ["reason"], registry=registry)
    limits = ConnectionLimits(max_connections=max_connections, header_timeout=10.0, keepalive_timeout=60.0)
    return ConnectionGuard(limits, gauge, closed, clock=clock, fd_limit=1 << 20), registry


def connect(g: ConnectionGuard) -> tuple[asyncio.Protocol, FakeTransport]:
    proto, transport = asyncio.Protocol(), FakeTransport()
    g.admit(proto, transport)
    return proto, transport


class TestEffectiveLimit:
    """The limit stays below the descriptor limit, with a reserve for the agent's own files."""

    @pytest.mark.parametrize(
        ("configured", "fds", "expected"),
        [(4096, 1 << 20, 4096), (4096, 256, 192), (4096, 1024, 768), (10, 256, 10), (4096, 40, 8)],
    )
    def test_table(self, configured: int, fds: int, expected: int) -> None:
        assert effective_limit(configured, fds) == expected


class TestTimeouts:
    """A connection without a complete request is closed after header_timeout; one between
    requests after keepalive_timeout; a busy one never."""

    def test_header_timeout_then_keepalive(self) -> None:
        clock = Clock()
        g, registry = guard(clock)
        fresh, fresh_t = connect(g)
        served, served_t = connect(g)
        busy, busy_t = connect(g)
        g.busy(served)
        g.idle(served)  # one request done: now on the keep-alive clock
        g.busy(busy)
        clock.now += 10.5
        assert g.sweep() == 1
        assert fresh_t.aborted
        assert not served_t.aborted
        assert not busy_t.aborted
        clock.now += 60
        assert g.sweep() == 1
        assert served_t.aborted
        assert not busy_t.aborted
        assert len(g) == 1
        assert registry.get_sample_value("closed_total", {"reason": "idle"}) == 2
        del fresh, busy

    def test_unknown_connections_are_ignored(self) -> None:
        g, _ = guard(Clock())
        g.busy(object())
        g.idle(object())
        assert len(g) == 0


class TestLimit:
    """At the limit the longest-idle connection makes room; when all are busy, none can."""

    def test_evicts_the_idlest(self) -> None:
        clock = Clock()
        g, registry = guard(clock, max_connections=2)
        a, a_t = connect(g)
        clock.now += 1
        b, b_t = connect(g)
        g.busy(a)
        g.idle(a)  # a is idle since now: b has been idle longer
        assert g.evict_idlest()
        assert b_t.aborted
        assert not a_t.aborted
        assert registry.get_sample_value("closed_total", {"reason": "evicted"}) == 1
        g.busy(a)
        assert not g.evict_idlest()  # a is busy: nothing to evict
        del b


class TestQuietLogs:
    """Hundreds of closes make one log line per LOG_EVERY seconds, not one each."""

    def test_one_line(self, caplog: pytest.LogCaptureFixture) -> None:
        clock = Clock()
        g, registry = guard(clock, max_connections=1000)
        with caplog.at_level(logging.WARNING, logger="shoal.agent.connections"):
            for _ in range(300):
                connect(g)
            clock.now += 11
            assert g.sweep() == 300
        assert len(caplog.records) == 1
        assert registry.get_sample_value("closed_total", {"reason": "idle"}) == 300
