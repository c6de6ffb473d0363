"""Hypothesis profiles and the per-target case counter shared by the fuzz tests and ``python -m tests.fuzz``."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings

CASES: Counter[str] = Counter()
"""cases tried per target since the process started."""

DEFAULT_PROFILE = "ci"
CI_EXAMPLES = 150
"""examples per target in ``pytest tests`` (all targets together take a few seconds)."""

settings.register_profile(
    "ci",
    max_examples=CI_EXAMPLES,
    deadline=None,
    derandomize=True,  # the same cases on every run: CI never flakes on a new random draw
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


def long_profile(examples: int) -> None:
    """Load a random (not derandomized) profile of ``examples`` cases per target."""
    settings.register_profile(
        "long",
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        print_blob=True,
    )
    settings.load_profile("long")


def counted(target: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Count every case the wrapped property is called with under ``target``."""

    def wrap(check: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(check)
        def run(*args: Any, **kwargs: Any) -> None:
            CASES[target] += 1
            check(*args, **kwargs)

        return run

    return wrap
