"""Virtual time: a clock and a heap of timed callbacks, run in order (ties in the order set)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

Callback = Callable[[], Any]


class Clock:
    """Seconds of virtual time; only the simulation's loop moves it, never backwards."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Timers:
    """Callbacks due at a virtual time. ``cancel`` is lazy: a cancelled entry is skipped."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, Callback]] = []
        self._seq = itertools.count()
        self._cancelled: set[int] = set()

    def at(self, when: float, callback: Callback) -> int:
        """Run ``callback`` at ``when`` (now, if that is past); a handle for :meth:`cancel`."""
        seq = next(self._seq)
        heapq.heappush(self._heap, (max(when, self.clock.now), seq, callback))
        return seq

    def after(self, delay: float, callback: Callback) -> int:
        return self.at(self.clock.now + delay, callback)

    def cancel(self, handle: int) -> None:
        self._cancelled.add(handle)

    def next_time(self) -> float:
        while self._heap and self._heap[0][1] in self._cancelled:
            self._cancelled.discard(heapq.heappop(self._heap)[1])
        return self._heap[0][0] if self._heap else float("inf")

    def run_due(self, until: float) -> int:
        """Run every callback due at or before ``until`` (the clock set to each one's time)."""
        ran = 0
        heap = self._heap
        while heap and heap[0][0] <= until:
            when, seq, callback = heapq.heappop(heap)
            if seq in self._cancelled:
                self._cancelled.discard(seq)
                continue
            self.clock.now = max(self.clock.now, when)
            callback()
            ran += 1
        return ran
