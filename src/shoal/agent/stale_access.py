"""Who may be served held content while a registry is down, from what the registry said before.

The registry's answers are written down as they pass (``OutageLedger``): which credentials it
let read a repository, which digests the repository holds, what each tag pointed at. When the
registry cannot answer, a held manifest or blob goes to a client only if the registry
confirmed these credentials for *this repository* within the grace period and the digest
belongs to *this repository* (it was served under it, or a manifest of it names it): a yes
for one repository is never a yes for another's private blobs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from shoal.agent.metrics import AgentMetrics
from shoal.agent.outage import RegistryBreaker, StaleImage, StaleLog, mark_stale, may_serve_stale
from shoal.oci.auth import Credentials
from shoal.store.outage_ledger import Fingerprints, OutageLedger, TagAnswer

log = logging.getLogger(__name__)

REWRITE_AFTER = 10.0
"""seconds before the same confirmation is written to disk again (every cache hit confirms)"""


def manifest_children(data: bytes) -> list[str]:
    """Digests a manifest or index names: config, layers, sub-manifests, subject."""
    try:
        doc: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return []
    if not isinstance(doc, dict):
        return []
    refs: list[Any] = [doc.get("config"), doc.get("subject")]
    for key in ("layers", "manifests", "blobs"):
        items = doc.get(key)
        if isinstance(items, list):
            refs.extend(items)
    return [r["digest"] for r in refs if isinstance(r, dict) and isinstance(r.get("digest"), str)]


def accepted_types(accept: str) -> list[str] | None:
    """Media types of an ``Accept`` header (None: anything goes)."""
    types = [part.split(";")[0].strip() for part in accept.split(",") if part.strip()]
    return None if not types or "*/*" in types else types


class StaleAccess:
    """Writes down the registry's answers, and decides what may be served when it is down.

    Parameters:
        ledger: where the answers are kept (survives restarts).
        fingerprints: keyed fingerprints of credentials.
        grace: seconds a confirmation stays good for stale answers; 0 turns them off.
        breakers: each registry's circuit breaker.
        metrics: the agent's metrics.
        clock: Unix seconds.
    """

    def __init__(
        self,
        ledger: OutageLedger,
        fingerprints: Fingerprints,
        grace: float,
        breakers: Mapping[str, RegistryBreaker],
        metrics: AgentMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.fingerprints = fingerprints
        self.grace = grace
        self.breakers = breakers
        self.metrics = metrics
        self.clock = clock
        self.stale_log = StaleLog(clock)
        self._written: dict[tuple[str, ...], float] = {}

    @property
    def enabled(self) -> bool:
        return self.grace > 0

    # -- the registry's answers ----------------------------------------------------------------
    def _due(self, key: tuple[str, ...], now: float) -> bool:
        if now - self._written.get(key, -REWRITE_AFTER) < REWRITE_AFTER:
            return False
        if len(self._written) > 65536:
            self._written.clear()
        self._written[key] = now
        return True

    def confirmed(self, creds: Credentials | None, registry: str, repository: str, digests: Iterable[str]) -> None:
        """The registry just served ``digests`` of ``repository`` to ``creds``."""
        if not self.enabled:
            return
        now = self.clock()
        local = self.fingerprints.local(creds)
        if self._due(("c", local, registry, repository), now):
            self.ledger.confirm(local, self.fingerprints.cluster(creds), registry, repository, now)
        fresh = [d for d in digests if self._due(("m", registry, repository, d), now)]
        if fresh:
            self.ledger.members(registry, repository, fresh, now)

    def manifest(self, registry: str, repository: str, data: bytes) -> None:
        """A manifest of ``repository`` (from the registry, or verified from a peer): what it
        names belongs to the repository."""
        if self.enabled:
            self.ledger.members(registry, repository, manifest_children(data), self.clock())

    def tagged(
        self, registry: str, repository: str, tag: str, media_type: str, digest: str, at: float | None = None
    ) -> None:
        """The registry gave ``digest`` for the tag (``at``: when, if not now: a peer's answer)."""
        if self.enabled:
            self.ledger.tag(registry, repository, tag, media_type, digest, self.clock() if at is None else at)

    def adopt(
        self, creds: Credentials | None, registry: str, repository: str, confirmed_at: float, digest: str
    ) -> None:
        """A peer's evidence: the registry confirmed ``creds`` for the repository at
        ``confirmed_at`` and it holds ``digest``. Kept with the peer's time, not ours."""
        local = self.fingerprints.local(creds)
        self.ledger.confirm(local, self.fingerprints.cluster(creds), registry, repository, confirmed_at)
        self.ledger.members(registry, repository, [digest], confirmed_at)

    # -- decisions ---------------------------------------------------------------------------
    def may_serve(self, creds: Credentials | None, registry: str, repository: str, digest: str) -> bool:
        """Held ``digest`` may go to ``creds`` under ``repository`` while the registry is down."""
        if not self.enabled or not self.ledger.holds(registry, repository, digest):
            return False
        at = self.ledger.confirmed_at(self.fingerprints.local(creds), registry, repository)
        return may_serve_stale(at, self.clock(), self.grace)

    def evidence(self, cluster_fp: str, registry: str, repository: str, digest: str) -> float | None:
        """For a peer: when the registry confirmed these (cluster-fingerprinted) credentials for
        the repository, if within the grace and the repository holds ``digest``."""
        if not self.enabled or not self.ledger.holds(registry, repository, digest):
            return None
        at = self.ledger.cluster_confirmed_at(cluster_fp, registry, repository)
        return at if may_serve_stale(at, self.clock(), self.grace) else None

    def last_tag(self, registry: str, repository: str, tag: str, accept: str) -> TagAnswer | None:
        return self.ledger.last_tag(registry, repository, tag, accepted_types(accept))

    # -- serving stale -------------------------------------------------------------------------
    def cause(self, registry: str) -> str:
        breaker = self.breakers.get(registry)
        return breaker.cause if breaker is not None and breaker.cause else "unreachable"

    def served(self, kind: str, registry: str, repository: str, reference: str, digest: str) -> None:
        """A held manifest or blob goes out because the registry is down: mark, count, log."""
        cause = self.cause(registry)
        mark_stale(cause)
        self.metrics.stale_responses.labels(kind).inc()
        if kind == "manifest":
            breaker = self.breakers.get(registry)
            self.stale_log.served(registry, repository, reference, digest, breaker.outages if breaker else 0, cause)

    def stale_images(self) -> list[StaleImage]:
        def outage(registry: str) -> int | None:
            breaker = self.breakers.get(registry)
            return breaker.outages if breaker is not None and breaker.down else None

        return self.stale_log.current(outage)
