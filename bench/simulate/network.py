"""A flow-level network: per-node upload and download caps, optional cross-zone caps, latency.

A *link* (one ordered pair of nodes) sends its queued transfers one after another, as a
peer connection does (the agent's link writer sends one piece at a time, in order; so does
a BitTorrent connection), so a link is one flow while it has anything queued. Flows share
the caps max-min fairly (:func:`bench.simulate.maxmin.max_min_rates`), recomputed when a
flow starts or ends, at most once per ``rate_interval`` of virtual time: a burst of starts
and ends at one moment costs one recomputation. Between recomputations a new flow gets
what its resources have left (never more), and an ended flow's share waits for the next one.
A piece that finishes within ``batch`` of another is delivered with it.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from bench.simulate.clock import Clock
from bench.simulate.maxmin import max_min_rates

Done = Callable[[], object]


@dataclass(slots=True, eq=False)
class Transfer:
    """Bytes queued on one link; ``on_done`` runs when the last byte is received."""

    link: Link
    nbytes: int
    on_done: Done
    cancelled: bool = False


@dataclass(slots=True, eq=False)
class Link:
    src: int
    dst: int
    slot: int = -1
    queue: deque[Transfer] = field(default_factory=deque)


class Network:
    """Nodes ``0..n-1`` with caps in bytes per second.

    Parameters:
        clock: the simulation's clock.
        up, down: each node's upload and download cap.
        zones: each node's zone (small integers); ``cross_zone`` caps the bytes per second
            from one zone to another (one cap per ordered pair of zones), None for no cap.
        rate_interval: least virtual seconds between two max-min recomputations.
        batch: pieces finishing within this many seconds of each other are delivered together.
        upload_slots: links a node sends on at once (None: all that have something queued);
            the others wait their turn, one piece per turn, in order.
    """

    def __init__(
        self,
        clock: Clock,
        up: Sequence[float],
        down: Sequence[float],
        zones: Sequence[int] | None = None,
        cross_zone: float | None = None,
        rate_interval: float = 0.005,
        batch: float = 0.001,
        upload_slots: int | None = None,
    ) -> None:
        n = len(up)
        self.upload_slots = upload_slots
        self.sending = [0] * n
        self.waiting: list[deque[Link]] = [deque() for _ in range(n)]
        self.clock = clock
        self.n = n
        self.zones = list(zones) if zones is not None else [0] * n
        self.zone_count = max(self.zones) + 1
        """zones are 0..zone_count-1; a node in zone -1 (the origin) is outside every zone"""
        caps = list(up) + list(down)
        self.cross_base = len(caps)
        if cross_zone is not None:
            caps += [cross_zone] * (self.zone_count * self.zone_count)
        self.inf = len(caps)
        caps.append(float("inf"))
        self.capacity = np.array(caps, dtype=np.float64)
        self.cross_limited = cross_zone is not None
        self.rate_interval = rate_interval
        self.batch = batch
        size = 1024
        self.res = np.zeros((size, 3), dtype=np.int64)
        self.left = np.zeros(size)
        self.rate = np.zeros(size)
        self.active = np.zeros(size, dtype=bool)
        self.slot_link: list[Link | None] = [None] * size
        self.free: list[int] = list(range(size - 1, -1, -1))
        self.used = np.zeros(len(caps))
        self.links: dict[tuple[int, int], Link] = {}
        self.node_links: list[dict[Link, None]] = [{} for _ in range(n)]
        """each node's links in the order they were opened (a set would order them by address,
        and a killed node's links would free their slots in another order in every process)"""
        self.t_last = 0.0
        self.dirty = False
        self.last_recompute = -float("inf")
        self.recomputations = 0
        self.sent_by = np.zeros(n)
        """bytes each node uploaded (cancelled transfers count what was sent)"""
        self.cross_zone_bytes = 0.0

    # -- the nodes' calls ----------------------------------------------------------------
    def send(self, src: int, dst: int, nbytes: int, on_done: Done) -> Transfer:
        """Queue ``nbytes`` from ``src`` to ``dst`` behind what that link already carries."""
        link = self.links.get((src, dst))
        if link is None:
            link = self.links[(src, dst)] = Link(src, dst)
            self.node_links[src][link] = None
            self.node_links[dst][link] = None
        transfer = Transfer(link, nbytes, on_done)
        link.queue.append(transfer)
        if link.slot < 0 and len(link.queue) == 1:
            self._start_or_wait(link)
        return transfer

    def cancel(self, transfer: Transfer) -> None:
        """Drop a queued transfer; one being sent is broken off (what went counts as sent)."""
        if transfer.cancelled:
            return
        transfer.cancelled = True
        link = transfer.link
        if not link.queue:
            return
        if link.queue[0] is transfer and link.slot >= 0:
            self._advance(self.clock.now)
            self._account(link, transfer.nbytes - self.left[link.slot])
            link.queue.popleft()
            self._next_or_stop(link)
        else:
            with contextlib.suppress(ValueError):
                link.queue.remove(transfer)

    def kill(self, node: int) -> None:
        """``node`` is gone: every transfer to or from it stops, no callback runs."""
        self._advance(self.clock.now)
        for link in list(self.node_links[node]):
            if link.slot >= 0 and link.queue:
                self._account(link, link.queue[0].nbytes - self.left[link.slot])
            for t in link.queue:
                t.cancelled = True
            link.queue.clear()
            if link.slot >= 0:
                self._stop(link)

    def progress(self, transfer: Transfer) -> float:
        """Bytes of ``transfer`` received so far."""
        link = transfer.link
        if transfer.cancelled or link.slot < 0 or not link.queue or link.queue[0] is not transfer:
            return 0.0
        elapsed = self.clock.now - self.t_last
        return float(transfer.nbytes - max(0.0, self.left[link.slot] - self.rate[link.slot] * elapsed))

    # -- the simulation loop's calls -----------------------------------------------------
    def next_time(self) -> float:
        """When the network next needs a step: a transfer finishing, or a recomputation due."""
        when = float("inf")
        if self.dirty:
            when = max(self.t_last, self.last_recompute + self.rate_interval)
        moving = self.active & (self.rate > 0)
        if moving.any():
            when = min(when, self.t_last + float((self.left[moving] / self.rate[moving]).min()))
        return when

    def step(self, now: float) -> None:
        """Move to ``now``: recompute rates if due, deliver every transfer that finished."""
        self._advance(now)
        if self.dirty and now >= self.last_recompute + self.rate_interval - 1e-12:
            self._recompute()
        horizon = self.rate * self.batch + 1e-6
        finished = np.flatnonzero(self.active & (self.left <= horizon))
        done: list[Transfer] = []
        for slot in finished.tolist():
            link = self.slot_link[slot]
            if link is None or link.slot != slot or not link.queue:
                continue
            transfer = link.queue.popleft()
            self._account(link, transfer.nbytes)
            if self.waiting[link.src] and link.queue:
                self._stop(link)  # its turn is over: the next waiting link sends one piece
                self.waiting[link.src].append(link)
                self._start_waiting(link.src)
            else:
                self._next_or_stop(link)
            done.append(transfer)
        for transfer in done:
            transfer.on_done()

    # -- flows ---------------------------------------------------------------------------
    def _advance(self, now: float) -> None:
        elapsed = now - self.t_last
        if elapsed > 0:
            np.subtract(self.left, self.rate * elapsed, out=self.left, where=self.active)
            self.t_last = now

    def _account(self, link: Link, nbytes: float) -> None:
        self.sent_by[link.src] += nbytes
        if self._crosses(link.src, link.dst):
            self.cross_zone_bytes += nbytes

    def _next_or_stop(self, link: Link) -> None:
        while link.queue and link.queue[0].cancelled:
            link.queue.popleft()
        if link.queue:
            self.left[link.slot] = link.queue[0].nbytes
        else:
            self._stop(link)

    def _start_or_wait(self, link: Link) -> None:
        if self.upload_slots is not None and self.sending[link.src] >= self.upload_slots:
            self.waiting[link.src].append(link)
        else:
            self._start(link)

    def _start_waiting(self, src: int) -> None:
        waiting = self.waiting[src]
        while waiting and (self.upload_slots is None or self.sending[src] < self.upload_slots):
            link = waiting.popleft()
            while link.queue and link.queue[0].cancelled:
                link.queue.popleft()
            if link.queue and link.slot < 0:
                self._start(link)

    def _start(self, link: Link) -> None:
        self._advance(self.clock.now)
        self.sending[link.src] += 1
        if not self.free:
            self._grow()
        slot = self.free.pop()
        link.slot = slot
        self.slot_link[slot] = link
        src, dst = link.src, link.dst
        cross = self.inf
        if self.cross_limited and self._crosses(src, dst):
            cross = self.cross_base + self.zones[src] * self.zone_count + self.zones[dst]
        res = (src, self.n + dst, cross)
        self.res[slot] = res
        self.left[slot] = link.queue[0].nbytes
        spare = min(self.capacity[r] - self.used[r] for r in res)
        rate = max(0.0, float(spare))
        self.rate[slot] = rate
        for r in set(res):
            self.used[r] += rate
        self.active[slot] = True
        self._touch()

    def _stop(self, link: Link) -> None:
        slot = link.slot
        rate = float(self.rate[slot])
        for r in set(self.res[slot].tolist()):
            self.used[r] -= rate
        self.active[slot] = False
        self.rate[slot] = 0.0
        self.left[slot] = 0.0
        self.slot_link[slot] = None
        self.free.append(slot)
        link.slot = -1
        self.sending[link.src] -= 1
        self._touch()
        if self.waiting[link.src]:
            self._start_waiting(link.src)

    def _crosses(self, src: int, dst: int) -> bool:
        a, b = self.zones[src], self.zones[dst]
        return a != b and a >= 0 and b >= 0

    def _touch(self) -> None:
        self.dirty = True

    def _recompute(self) -> None:
        slots = np.flatnonzero(self.active)
        self.rate[:] = 0.0
        if slots.size:
            self.rate[slots] = max_min_rates(self.capacity, self.res[slots])
        res = self.res[slots]
        uniq_rate = self.rate[slots]
        self.used = np.bincount(res[:, 0], weights=uniq_rate, minlength=self.capacity.size)
        self.used += np.bincount(res[:, 1], weights=uniq_rate, minlength=self.capacity.size)
        cross = res[:, 2] != self.inf
        self.used += np.bincount(res[cross, 2], weights=uniq_rate[cross], minlength=self.capacity.size)
        self.dirty = False
        self.last_recompute = self.clock.now
        self.recomputations += 1

    def _grow(self) -> None:
        size = self.left.size
        self.res = np.concatenate([self.res, np.zeros((size, 3), dtype=np.int64)])
        self.left = np.concatenate([self.left, np.zeros(size)])
        self.rate = np.concatenate([self.rate, np.zeros(size)])
        self.active = np.concatenate([self.active, np.zeros(size, dtype=bool)])
        self.slot_link.extend([None] * size)
        self.free.extend(range(2 * size - 1, size - 1, -1))
