"""Who may read what: the registry's answer on (credentials, repository), cached briefly.

Cached blobs of a private repository are served only to clients whose credentials the
registry accepts for that repository. Asking the registry each time would undo the cache,
so yes/no answers are kept for ``ttl`` seconds; a "yes" older than that is still used when
the registry cannot be reached at all (the client could read it a moment ago).
"""

from __future__ import annotations

import time
from collections.abc import Callable

AccessKey = tuple[str, str, str]
"""(credential fingerprint, registry, repository)"""


class AccessCache:
    def __init__(
        self,
        ttl: float = 60.0,
        negative_ttl: float = 5.0,
        stale_grace: float = 24 * 3600.0,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 65536,
    ) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.stale_grace = stale_grace
        self._clock = clock
        self._max = max_entries
        self._answers: dict[AccessKey, tuple[bool, float]] = {}

    def lookup(self, key: AccessKey) -> bool | None:
        """A fresh answer, or None when the registry must be asked."""
        answer = self._answers.get(key)
        if answer is None:
            return None
        allowed, at = answer
        age = self._clock() - at
        if age <= (self.ttl if allowed else self.negative_ttl):
            return allowed
        return None

    def stale_allowed(self, key: AccessKey) -> bool:
        answer = self._answers.get(key)
        return answer is not None and answer[0] and self._clock() - answer[1] <= self.stale_grace

    def record(self, key: AccessKey, allowed: bool) -> None:
        if len(self._answers) >= self._max:
            self._answers.pop(next(iter(self._answers)))
        self._answers.pop(key, None)
        self._answers[key] = (allowed, self._clock())
