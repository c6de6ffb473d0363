"""How long one request waits for the registry: short only when something else can answer.

A direct pull waits for a slow registry; a pull through Shoal must not fail where that one
would succeed. So the short bound (``registry_timeout``) applies only when something held
(here or in the cluster, for these credentials) can be served instead: when it passes, that
is served and the registry is marked hung. When nothing can stand in, the same request is
waited for up to the long bound and its answer passed on. A registry already marked hung is
not asked for what is held (no second wait), but is still asked for anything else.

Pure: the clock is injected, the caller does the I/O each step names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

ANSWER_TIMEOUT = 300.0
"""seconds a request waits for the registry's response headers when nothing else can answer"""


class Step(StrEnum):
    SEND = "send"
    """send the request to the registry"""
    ASK_HELD = "ask held"
    """find out whether something held can be served instead (the request keeps running)"""
    WAIT = "wait"
    """wait for the registry's answer (``RegistryWait.next`` says how long)"""
    SERVE_HELD = "serve held"
    """stop waiting: serve what is held"""
    GIVE_UP = "give up"
    """no answer within the long bound: the registry cannot answer"""


@dataclass(frozen=True, slots=True)
class WaitLimits:
    """Parameters:
    header_timeout: seconds to wait when something held can be served instead (None: no
        short bound, every request waits ``answer_timeout``).
    answer_timeout: seconds to wait when nothing can."""

    header_timeout: float | None
    answer_timeout: float = ANSWER_TIMEOUT


class RegistryWait:
    """One request's wait, step by step (``next``); the caller reports what it learnt.

    Parameters:
        limits: the two bounds.
        hung: the registry is marked hung (a request already waited out the short bound).
        clock: monotonic seconds.
    """

    def __init__(self, limits: WaitLimits, hung: bool, clock: Callable[[], float]) -> None:
        self.limits = limits
        self.hung = hung
        self.clock = clock
        self.held: bool | None = None
        """whether something held can be served instead (None: not asked yet)"""
        self.sent_at: float | None = None

    def sent(self) -> None:
        self.sent_at = self.clock()

    def learnt(self, held: bool) -> None:
        self.held = held

    @property
    def waited(self) -> float:
        return 0.0 if self.sent_at is None else self.clock() - self.sent_at

    def next(self) -> tuple[Step, float]:
        """What to do now, and for ``WAIT`` how many seconds at most (else 0)."""
        short = self.limits.header_timeout
        if self.sent_at is None:
            if self.hung and short is not None:
                if self.held is None:
                    return Step.ASK_HELD, 0.0
                if self.held:
                    return Step.SERVE_HELD, 0.0
            return Step.SEND, 0.0
        waited = self.waited
        if short is not None and self.held is not False:
            if waited < short:
                return Step.WAIT, short - waited
            if self.held is None:
                return Step.ASK_HELD, 0.0
            return Step.SERVE_HELD, 0.0
        if waited < self.limits.answer_timeout:
            return Step.WAIT, self.limits.answer_timeout - waited
        return Step.GIVE_UP, 0.0
