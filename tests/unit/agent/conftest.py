"""Fixtures the agent's unit tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shoal.store.testing import MemoryStore


@pytest.fixture
def store() -> Iterator[MemoryStore]:
    """The in-memory blob store, closed after the test."""
    s = MemoryStore()
    yield s
    s.close()
