"""A token bucket shared by every byte the agent moves for the swarm (``p2p.ratelimit``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` bytes per second with bursts up to ``burst`` bytes; ``rate <= 0`` means unlimited.

    Waiters are served in arrival order, so one big reader cannot starve the others.
    """

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(rate / 4, 4 << 20)
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def delay_for(self, amount: int) -> float:
        """Seconds to wait before ``amount`` bytes may go (taking them); pure given the clock."""
        self._refill()
        self._tokens -= amount
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def consume(self, amount: int) -> None:
        if self.rate <= 0 or amount <= 0:
            return
        async with self._lock:
            delay = self.delay_for(amount)
            if delay > 0:
                await asyncio.sleep(delay)
