"""bench.agent's command line: which agents run side by side."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest
from bench.agent import ThreadSampler, cpu_seconds, parse_agents


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


def test_the_sampler_counts_a_thread_that_ended_before_the_span_did() -> None:
    """The origin fetch's threads end before the GET's span: their CPU must still count."""
    sampler = ThreadSampler(os.getpid(), interval=0.005)

    def busy() -> None:
        started = time.thread_time()
        while time.thread_time() < started + 0.1:
            hashlib.sha256(b"x" * 65536).digest()

    worker = threading.Thread(target=busy)
    worker.start()
    worker.join()
    time.sleep(0.02)
    assert 0.08 <= sampler.stop() < 5
