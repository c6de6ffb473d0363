"""The token bucket behind ``p2p.ratelimit`` (and the demo origin's upload cap)."""

from __future__ import annotations

import asyncio
import time

from shoal.p2p.ratelimit import TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TestTokenBucket:
    """Bytes beyond the burst wait rate-proportional time; unlimited buckets never wait."""

    def test_burst_is_free_then_debt_is_paid_at_rate(self) -> None:
        clock = FakeClock()
        bucket = TokenBucket(1000.0, burst=500.0, clock=clock)
        assert bucket.delay_for(500) == 0.0
        assert bucket.delay_for(250) == 0.25
        clock.now += 0.25
        assert bucket.delay_for(0) == 0.0

    def test_refill_is_capped_at_the_burst(self) -> None:
        clock = FakeClock()
        bucket = TokenBucket(1000.0, burst=100.0, clock=clock)
        clock.now += 60
        assert bucket.delay_for(100) == 0.0
        assert bucket.delay_for(100) == 0.1

    async def test_concurrent_consumers_share_the_rate(self) -> None:
        bucket = TokenBucket(rate=1_000_000, burst=100_000)
        start = time.monotonic()
        await asyncio.gather(*(bucket.consume(100_000) for _ in range(4)))
        elapsed = time.monotonic() - start
        assert 0.25 <= elapsed < 1.0  # 400 kB with a 100 kB burst at 1 MB/s: 0.3 s

    async def test_zero_rate_means_unlimited(self) -> None:
        bucket = TokenBucket(0)
        start = time.monotonic()
        await bucket.consume(10**12)
        assert time.monotonic() - start < 0.1
