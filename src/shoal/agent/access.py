"""Who may read what: the registry's answer on (credentials, registry, repository, digest), cached briefly.

The cache is shared by every client of the node and keyed by digest alone, so holding a blob
says nothing about who may read it. Cached content goes to a client only after the registry
confirmed that *this repository* holds *this digest* for *these credentials*: a fetch of it
through that repository, or a HEAD of it there. A yes on one repository or one digest is
never taken for another (a client that may read ``pub/app`` could otherwise read every
private blob the node holds by asking for its digest under ``pub/app``).

Asking the registry on every request would undo the cache, so answers are kept for ``ttl``
seconds (refusals for ``negative_ttl``). When the registry cannot be reached at all, the
older yeses that count are ``shoal.agent.stale_access``'s (kept on disk, per repository).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from shoal.core.digest import Digest
from shoal.oci.auth import Credentials, fingerprint


class AccessKey(NamedTuple):
    credentials: str
    """``shoal.oci.auth.fingerprint`` of the client's credentials"""
    registry: str
    repository: str
    digest: str

    @classmethod
    def of(cls, creds: Credentials | None, registry: str, repository: str, digest: Digest) -> AccessKey:
        return cls(fingerprint(creds), registry, repository, str(digest))


class AccessCache:
    def __init__(
        self,
        ttl: float = 60.0,
        negative_ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 65536,
    ) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._clock = clock
        self._max = max_entries
        self._answers: OrderedDict[AccessKey, tuple[bool, float]] = OrderedDict()

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

    def record(self, key: AccessKey, allowed: bool) -> None:
        self._answers.pop(key, None)
        self._answers[key] = (allowed, self._clock())
        while len(self._answers) > self._max:
            self._answers.popitem(last=False)

    def __len__(self) -> int:
        return len(self._answers)
