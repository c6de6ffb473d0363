"""A registry that cannot answer: its circuit breaker, and the rule for serving what is held.

Unreachable means refused, reset, DNS, TLS, a timeout, a 5xx or a 429 (``UpstreamUnavailable``);
a 401, 403 or 404 is the registry's word and is never an outage. The first failure marks the
registry down. A registry that fails fast (refused, reset, 5xx) is still asked on every
request: that costs milliseconds, and its first answer ends the outage, so a moved tag is
seen on that very answer. A registry that hung (a request waited out its bounded wait) is
marked hung: requests for what is held go straight to it, requests for anything else are
still sent (a real answer wins), and a prober asks it every ``probe_interval``
(``probe_due``) until it answers.

How long one request waits for the registry is ``RegistryWait``'s: the short bound
(``registry_timeout``) only when something held can be served instead; else the long one.

While a registry is down, what is held goes to credentials the registry confirmed for that
repository within ``grace`` seconds (``may_serve_stale``), and each such response is marked
(``mark_stale``: a ``Warning`` header is added before the headers leave).

Pure: the clock is injected, nothing here does I/O.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

STALE_WARNING = '110 shoal "Response is Stale: the registry cannot be reached"'
"""RFC 9111 ``Warning`` 110 (obsoleted but still shown by clients and proxies): a stale answer"""
CLOCK_SKEW = 60.0
"""seconds a peer's confirmation time may lie in our future and still count"""


def may_serve_stale(confirmed_at: float | None, now: float, grace: float) -> bool:
    """True when a confirmation made at ``confirmed_at`` (Unix seconds) still covers ``now``.

    ``grace`` 0 turns serving during outages off."""
    if grace <= 0 or confirmed_at is None:
        return False
    age = now - confirmed_at
    return -CLOCK_SKEW <= age <= grace


class RegistryBreaker:
    """One registry's circuit breaker (``shoal.oci.client.Breaker``).

    Parameters:
        registry: the registry's name, for logs.
        probe_interval: seconds between probes while the registry is down.
        clock: monotonic seconds.
    """

    def __init__(self, registry: str, probe_interval: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.probe_interval = probe_interval
        self.clock = clock
        self.down_since: float | None = None
        self.cause = ""
        self.hung = False
        """the last failure was a timeout: requests are not sent until a probe gets an answer"""
        self.outages = 0
        """outages seen so far: the number of the current one while down"""
        self._next_probe = 0.0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def marked_hung(self) -> str | None:
        """None unless the registry hung: then why it is marked down (for the client's error)."""
        if self.down_since is None or not self.hung:
            return None
        return f"is marked down for {self.clock() - self.down_since:.1f}s ({self.cause})"

    def probe_due(self) -> bool:
        """A hung registry's next probe is due (the prober then reports ``answered``/``failed``)."""
        now = self.clock()
        if not self.hung or now < self._next_probe:
            return False
        self._next_probe = now + self.probe_interval
        return True

    def answered(self) -> None:
        if self.down_since is not None:
            log.warning(
                "registry %s answers again after %.1fs down: using it", self.registry, self.clock() - self.down_since
            )
        self.down_since = None
        self.hung = False

    def failed(self, cause: str, *, hung: bool = False) -> None:
        """``hung``: the request waited out the whole timeout."""
        now = self.clock()
        if self.down_since is None:
            self.down_since = now
            self.outages += 1
            log.warning(
                "registry %s cannot answer (%s): serving what the cluster holds to clients it confirmed; "
                "probing it every %gs",
                self.registry,
                cause,
                self.probe_interval,
            )
        self.cause = cause
        if hung and not self.hung:
            self._next_probe = now + self.probe_interval
        self.hung = hung


@dataclass(slots=True)
class StaleMark:
    """Whether the response to the current request serves held content for a down registry."""

    reason: str | None = None


_MARK: contextvars.ContextVar[StaleMark | None] = contextvars.ContextVar("shoal_stale_mark", default=None)


def begin_request() -> StaleMark:
    """A fresh mark for the request this task handles (tasks it starts inherit it)."""
    mark = StaleMark()
    _MARK.set(mark)
    return mark


def mark_stale(reason: str) -> None:
    """The current request is answered from held content because the registry is down."""
    mark = _MARK.get()
    if mark is not None and mark.reason is None:
        mark.reason = reason


def image_name(registry: str, repository: str, reference: str) -> str:
    """``registry/repository:tag`` or ``registry/repository@digest``."""
    return f"{registry}/{repository}{'@' if ':' in reference else ':'}{reference}"


@dataclass(slots=True)
class StaleImage:
    """One image served stale during the current outage of its registry, for ``shoal status``."""

    registry: str
    repository: str
    reference: str
    digest: str
    first: float
    last: float
    count: int = 1


@dataclass(slots=True)
class StaleLog:
    """Stale images, one log line per image per outage.

    Parameters:
        clock: Unix seconds (shown in ``shoal status``).
    """

    clock: Callable[[], float] = time.time
    images: dict[tuple[str, str, str, int], StaleImage] = field(default_factory=dict)

    def served(self, registry: str, repository: str, reference: str, digest: str, outage: int, cause: str) -> bool:
        """Note a stale manifest; True when it is the first for this image in this outage."""
        key = (registry, repository, reference, outage)
        now = self.clock()
        seen = self.images.get(key)
        if seen is not None:
            seen.last, seen.count, seen.digest = now, seen.count + 1, digest
            return False
        self.images = {k: v for k, v in self.images.items() if k[0] != registry or k[3] == outage}
        self.images[key] = StaleImage(registry, repository, reference, digest, now, now)
        log.warning(
            "registry %s cannot answer (%s): serving %s as held (%s), stale",
            registry,
            cause,
            image_name(registry, repository, reference),
            digest,
        )
        return True

    def current(self, down: Callable[[str], int | None]) -> list[StaleImage]:
        """Images served stale in each registry's current outage (``down``: its number, or
        None when the registry is up)."""
        return [image for key, image in self.images.items() if down(key[0]) == key[3]]
