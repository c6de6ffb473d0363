"""Scheduler replicas around the real ``SchedulerState``, with the agent client's failover.

Each blob's calls go to the replicas in rendezvous order (``rank_schedulers``, the agent's own
function); a dead replica costs a caller one failed attempt (``CONNECT_TIMEOUT``) and is
then tried last for ``DOWN_FOR`` seconds, as ``SchedulerClient`` does. Every call into a
``SchedulerState`` is timed: that is the scheduler's cost of the rollout's decisions (HTTP
and JSON are not in it). The timer is ``perf_counter``: the simulator is one thread, so the
time inside a call is its CPU time, or more if the process is descheduled mid-call. A CPU
clock (``process_time``) is a system call, a tenth of a short call's cost, and each bracket
counted about one read of it (``docs/fleet-benchmark.md``, "Scheduler CPU").
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from bench.simulate.world import World
from shoal.p2p.protocol import HashesView, JoinRequest, Report, TaskView
from shoal.p2p.rendezvous import rank_schedulers
from shoal.p2p.scheduler_client import CONNECT_TIMEOUT, DOWN_FOR
from shoal.scheduler.config import SchedulerConfig
from shoal.scheduler.state import SchedulerState, StateError

T = TypeVar("T")
_timer = time.perf_counter
SCHEDULER_LATENCY = 0.0005
"""one-way seconds between an agent and a scheduler replica"""


class Replicas:
    def __init__(self, world: World, count: int, config: SchedulerConfig, seed: int) -> None:
        self.world = world
        self.names = [f"http://scheduler-{i}:8002" for i in range(count)]
        self.states = [SchedulerState(config, random.Random(f"scheduler/{seed}/{i}")) for i in range(count)]
        self.alive = [True] * count
        self.config = config
        self.down_until: dict[tuple[int, int], float] = {}
        """(node, replica) -> until when that node tries the replica last"""
        self.cpu_seconds = 0.0
        self.calls = 0
        self.by_method: dict[str, list[float]] = {}
        """method -> [calls, seconds]: where the scheduler's time went"""
        self.failed_calls = 0
        self._ranking: dict[str, list[int]] = {}
        self.hash_waiters: list[dict[str, list[tuple[int, int, Callable[[HashesView | None], None]]]]] = [
            {} for _ in range(count)
        ]
        self.seen_hashes: list[dict[str, int]] = [{} for _ in range(count)]

    def start(self) -> None:
        for i in range(len(self.states)):
            self._expire_loop(i)

    def kill(self, replica: int) -> None:
        """The replica's process is gone: its state too; its long-polls fail."""
        self.alive[replica] = False
        waiters = self.hash_waiters[replica]
        self.hash_waiters[replica] = {}
        for entries in waiters.values():
            for node, _, answer in entries:
                self.world.timers.after(SCHEDULER_LATENCY, partial(self._fail_waiter, node, answer))

    def _fail_waiter(self, node: int, answer: Callable[[HashesView | None], None]) -> None:
        if node not in self.world.dead:
            answer(None)

    # -- the agents' calls ---------------------------------------------------------------
    def join(self, node: int, digest: str, req: JoinRequest, answer: Callable[[TaskView | None], None]) -> None:
        self._call("join", node, digest, lambda s: s.join(digest, req, self.world.clock.now), answer)

    def report(self, node: int, digest: str, rep: Report, answer: Callable[[TaskView | None], None]) -> None:
        def call(state: SchedulerState) -> TaskView:
            view = state.report(digest, rep, self.world.clock.now)
            return view

        self._call("report", node, digest, call, answer, after=lambda r: self._wake_hashes(r, digest))

    def hashes(self, node: int, digest: str, start: int, answer: Callable[[HashesView | None], None]) -> None:
        """The long-poll: answered when hashes from ``start`` on are known (or at once if some are)."""

        def call(state: SchedulerState) -> HashesView:
            return state.hashes(digest, start)

        def reply(replica: int, view: HashesView | None) -> None:
            if view is not None and not view.hashes:
                self.hash_waiters[replica].setdefault(digest, []).append((node, start, answer))
                return
            answer(view)

        self._call("hashes", node, digest, call, answer, waiter=reply)

    # -- plumbing ------------------------------------------------------------------------
    def ranking(self, digest: str) -> list[int]:
        order = self._ranking.get(digest)
        if order is None:
            order = self._ranking[digest] = [self.names.index(u) for u in rank_schedulers(digest, self.names)]
        return order

    def _call(
        self,
        method: str,
        node: int,
        digest: str,
        fn: Callable[[SchedulerState], T],
        answer: Callable[[T | None], None],
        *,
        after: Callable[[int], None] | None = None,
        waiter: Callable[[int, T | None], None] | None = None,
    ) -> None:
        now = self.world.clock.now
        order = sorted(self.ranking(digest), key=lambda r: self.down_until.get((node, r), 0.0) > now)
        delay = SCHEDULER_LATENCY
        replica = None
        for r in order:
            if self.alive[r]:
                replica = r
                break
            delay += CONNECT_TIMEOUT
            self.down_until[(node, r)] = now + delay + DOWN_FOR
        if replica is None:
            self.world.timers.after(delay, lambda: answer(None))
            return
        chosen = replica

        def arrive() -> None:
            if not self.alive[chosen]:
                self.failed_calls += 1
                self.world.timers.after(
                    CONNECT_TIMEOUT, lambda: self._call(method, node, digest, fn, answer, after=after, waiter=waiter)
                )
                return
            state = self.states[chosen]
            t0 = _timer()
            try:
                result: T | None = fn(state)
            except StateError:
                result = None
            self._count(method, _timer() - t0, 1)
            if after is not None:
                after(chosen)

            def back() -> None:
                if node in self.world.dead:
                    return
                if waiter is not None:
                    waiter(chosen, result)
                else:
                    answer(result)

            self.world.timers.after(SCHEDULER_LATENCY, back)

        self.world.timers.after(delay, arrive)

    def _wake_hashes(self, replica: int, digest: str) -> None:
        task = self.states[replica].tasks.get(digest)
        known = task.hashes_known if task is not None else 0
        seen = self.seen_hashes[replica].get(digest, 0)
        if known == seen:
            return
        self.seen_hashes[replica][digest] = known
        if known < seen:
            return  # the hashes were reset: the next ones published wake the waiters
        dead = self.world.dead
        waiters = [w for w in self.hash_waiters[replica].pop(digest, []) if w[0] not in dead]
        state = self.states[replica]
        # one call per start the waiters ask from, its answer handed to each of them: the
        # state shares an answer between callers of one start anyway (``SHARED_VIEWS``), and a
        # rollout's waiters ask from a few starts (at N=1,000: 5,455 calls, one per waiter,
        # became 15); timed as one (a clock read costs about as much as a call answered from
        # the shared views)
        t0 = _timer()
        views = {start: state.hashes(digest, start) for start in {start for _, start, _ in waiters}}
        self._count("hashes, woken", _timer() - t0, len(views))
        still: list[tuple[int, int, Callable[[HashesView | None], None]]] = []
        for node, start, answer in waiters:
            view = views[start]
            if view.hashes:
                self.world.timers.after(SCHEDULER_LATENCY, partial(answer, view))
            else:
                still.append((node, start, answer))
        if still:
            self.hash_waiters[replica][digest] = still

    def _count(self, method: str, seconds: float, calls: int) -> None:
        self.cpu_seconds += seconds
        self.calls += calls
        counted = self.by_method.get(method)
        if counted is None:
            counted = self.by_method[method] = [0.0, 0.0]
        counted[0] += calls
        counted[1] += seconds

    def _expire_loop(self, replica: int) -> None:
        if not self.alive[replica]:
            return
        t0 = _timer()
        self.states[replica].expire(self.world.clock.now)
        self._count("expire", _timer() - t0, 1)
        self.world.timers.after(self.config.expire_interval, lambda: self._expire_loop(replica))
