"""A log line per event type at most every few seconds, with how many it stands for.

An attacker who can cause an event (a cut connection, a refused one) must not be able to
flood the log with it; the counts still reach the log, and metrics count every one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

LOG_EVERY = 10.0


class RateLimitedLog:
    def __init__(
        self, logger: logging.Logger, what: str, every: float = LOG_EVERY, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._log = logger
        self._what = what
        self._every = every
        self._clock = clock
        self._counts: dict[str, int] = {}
        self._last = -float("inf")

    def note(self, reason: str, kind: str = "") -> bool:
        """Count one event; log the counts so far if the last line is old enough. True if logged."""
        self._counts[kind] = self._counts.get(kind, 0) + 1
        now = self._clock()
        if now - self._last < self._every:
            return False
        counts = ", ".join(f"{n} {k}".strip() for k, n in sorted(self._counts.items()))
        self._log.warning("%s (%s since the last line; last: %s)", self._what, counts, reason)
        self._counts.clear()
        self._last = now
        return True
