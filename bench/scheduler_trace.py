"""``python -m bench.scheduler_trace``: a simulated rollout's scheduler calls, recorded once, replayed.

``record OUT -- SIMULATE-ARGS`` runs ``bench.simulate`` with every call into a
``SchedulerState`` (join, report, hashes, leave, expire: arguments and answer) written to
OUT, a pickle. ``replay OUT`` applies the same calls in the same order to fresh states of
this tree's ``SchedulerState`` (seeded as the simulator seeded them), says how many answers
differ from the recorded ones, and prints the CPU time per kind of call: the best of
``--repeat`` replays in total, then each call timed on its own. With ``PYTHONPATH=OTHER/src``
ahead of the tree it replays another version: two versions on identical work, side by side.

A replay is not the simulator's figure: with nothing around the calls, caches stay warm and
no garbage collection of the simulator's objects lands in them, so calls cost about half of
what ``scheduler_cpu_s`` charges them in a rollout.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import pickle
import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from shoal.scheduler import state as scheduler_state
from shoal.scheduler.config import SchedulerConfig

CALLS = ("join", "report", "hashes", "leave", "expire")

Call = tuple[int, str, tuple[Any, ...], Any]
"""(replica, method, arguments, answer or the repr of its StateError)"""


def record(out: str, argv: Sequence[str]) -> int:
    from bench.simulate import cli

    replicas: list[tuple[SchedulerConfig, object]] = []
    calls: list[Call] = []
    index: dict[int, int] = {}
    cls = scheduler_state.SchedulerState
    init = cls.__init__

    def new_init(self: Any, config: SchedulerConfig, rng: random.Random | None = None) -> None:
        init(self, config, rng)
        index[id(self)] = len(replicas)
        replicas.append((config, self.rng.getstate()))

    def traced(name: str) -> Callable[..., Any]:
        method = getattr(cls, name)

        @functools.wraps(method)
        def call(self: Any, *args: Any) -> Any:
            try:
                answer = method(self, *args)
            except scheduler_state.StateError as exc:
                calls.append((index[id(self)], name, args, repr(exc)))
                raise
            calls.append((index[id(self)], name, args, answer))
            return answer

        return call

    cls.__init__ = new_init  # type: ignore[method-assign]
    for name in CALLS:
        setattr(cls, name, traced(name))
    status = cli.main(list(argv))
    with open(out, "wb") as f:
        pickle.dump({"replicas": replicas, "calls": calls}, f, protocol=pickle.HIGHEST_PROTOCOL)
    print(f"recorded {len(calls)} calls of {len(replicas)} replicas to {out}")
    return status


def _fresh(replicas: list[tuple[SchedulerConfig, object]]) -> list[scheduler_state.SchedulerState]:
    states = []
    for config, rng_state in replicas:
        rng = random.Random()
        rng.setstate(rng_state)  # type: ignore[arg-type]
        states.append(scheduler_state.SchedulerState(config, rng))
    return states


def replay(path: str, repeat: int) -> int:
    with open(path, "rb") as f:
        trace = pickle.load(f)
    replicas, calls = trace["replicas"], trace["calls"]
    totals: list[float] = []
    differ = 0
    for round_ in range(repeat):
        states = _fresh(replicas)
        gc.collect()
        started = time.process_time()
        answers = []
        for replica, name, args, _ in calls:
            try:
                answers.append(getattr(states[replica], name)(*args))
            except scheduler_state.StateError as exc:
                answers.append(repr(exc))
        totals.append(time.process_time() - started)
        if round_ == 0:
            differ = sum(1 for call, answer in zip(calls, answers, strict=True) if call[3] != answer)
    states = _fresh(replicas)
    clock = time.process_time
    spent: dict[str, float] = {}
    counts: dict[str, int] = {}
    for replica, name, args, _ in calls:
        method = getattr(states[replica], name)
        t0 = clock()
        with contextlib.suppress(scheduler_state.StateError):
            method(*args)
        spent[name] = spent.get(name, 0.0) + clock() - t0
        counts[name] = counts.get(name, 0) + 1
    print(f"{len(calls)} calls, {differ} answers differ from the recording ({scheduler_state.__file__})")
    print(f"replay CPU: best {min(totals):.3f} s of {repeat} ({', '.join(f'{t:.3f}' for t in totals)})")
    for name in CALLS:
        if name in counts:
            print(
                f"  {name:7} {counts[name]:8} calls {spent[name]:7.3f} s"
                f" {1e6 * spent[name] / counts[name]:7.2f} us/call (each timed, clock reads included)"
            )
    return 1 if differ else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    simulate: list[str] = []
    if "--" in args:
        cut = args.index("--")
        args, simulate = args[:cut], args[cut + 1 :]
    parser = argparse.ArgumentParser(prog="python -m bench.scheduler_trace", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="run bench.simulate (its arguments after --) and record")
    rec.add_argument("out")
    rep = sub.add_parser("replay", help="replay a recording on this tree's SchedulerState")
    rep.add_argument("trace")
    rep.add_argument("--repeat", type=int, default=3)
    ns = parser.parse_args(args)
    if ns.command == "record":
        return record(ns.out, simulate)
    return replay(ns.trace, ns.repeat)


if __name__ == "__main__":
    sys.exit(main())
