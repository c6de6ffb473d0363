"""Hypothesis profiles and the per-target case counter shared by the fuzz tests and ``python -m tests.fuzz``."""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings

CASES: Counter[str] = Counter()
"""cases tried per target since the process started."""

CI_EXAMPLES = 150
"""examples per test in ``pytest tests`` (all the fuzz tests together take a few seconds)."""
HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "shoal-fuzz-ci",
    max_examples=CI_EXAMPLES,
    deadline=None,
    derandomize=True,  # the same cases on every run: CI never flakes on a new random draw
    database=None,
    suppress_health_check=HEALTH,
    print_blob=True,
)
ACTIVE = os.environ.get("SHOAL_FUZZ_PROFILE", "shoal-fuzz-ci")
"""the profile the fuzz tests are decorated with (read when each test is defined)."""


def fuzzed[T: Callable[..., Any]](test: T) -> T:
    """Apply the active fuzz profile to one test (not globally: other hypothesis tests keep theirs)."""
    applied: T = settings(settings.get_profile(ACTIVE))(test)
    return applied


def use_long_profile(examples: int) -> None:
    """Make tests defined from now on run ``examples`` random (not derandomized) cases."""
    global ACTIVE
    settings.register_profile(
        "shoal-fuzz-long",
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=HEALTH,
        print_blob=True,
    )
    ACTIVE = "shoal-fuzz-long"


def counted(target: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Count every case the wrapped property is called with under ``target``."""

    def wrap(check: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(check)
        def run(*args: Any, **kwargs: Any) -> None:
            CASES[target] += 1
            check(*args, **kwargs)

        return run

    return wrap
