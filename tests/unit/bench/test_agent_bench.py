"""bench.agent's command line: which agents run side by side."""

from __future__ import annotations

import os
import time

import pytest
from bench.agent import cpu_seconds, parse_agents


def test_agents_are_named_interpreters() -> None:
    assert parse_agents("main=/work/main/.venv/bin/python,new=.venv/bin/python") == {
        "main": "/work/main/.venv/bin/python",
        "new": ".venv/bin/python",
    }


@pytest.mark.parametrize("text", ["/usr/bin/python", "main=", "=python", "a=x,,b=y"])
def test_an_agent_without_a_name_or_interpreter_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="NAME=PYTHON"):
        parse_agents(text)


def test_cpu_seconds_grow_with_work() -> None:
    before = cpu_seconds(os.getpid())
    started = time.monotonic()
    while cpu_seconds(os.getpid()) < before + 0.05 and time.monotonic() < started + 10:
        sum(range(10_000))
    assert cpu_seconds(os.getpid()) >= before + 0.05
