"""The ``swarm:`` section of the agent's config: the swarm's policy knobs, in one place.

Every default is read from the dataclass that uses it (:class:`~shoal.p2p.download_state.DownloadRules`,
:class:`~shoal.agent.swarm.SwarmConfig`, :class:`~shoal.agent.peer_hub.HubConfig`), so a number
is written once. :func:`swarm_configs` turns the section into those dataclasses; the swarm
modules never read the agent's config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from shoal.agent.peer_hub import HubConfig
from shoal.agent.peer_link import peer_secret
from shoal.agent.swarm import SwarmConfig
from shoal.core.units import parse_duration
from shoal.p2p.download_state import DownloadRules
from shoal.p2p.tls import TlsContexts

__all__ = ["SCHEDULER_LEASE_TTL", "SwarmSettings", "SwarmSettingsError", "parse_swarm", "swarm_configs"]

SCHEDULER_LEASE_TTL = 15.0
"""the scheduler's default ``lease_ttl``: the agent cannot see the scheduler's own setting, so
advice about it is given against this default"""

_RULES = DownloadRules()
_SWARM = SwarmConfig(peer_id="", address="", token=None)
_HUB = HubConfig(peer_id="", secret=b"")


class SwarmSettingsError(ValueError):
    """A ``swarm:`` value that cannot be used; the message starts with ``swarm.<key>``."""


@dataclass(frozen=True, slots=True)
class SwarmSettings:
    """The swarm's knobs. Durations are seconds; every value must be positive."""

    max_parents: int = _RULES.max_parents
    """parents one download takes pieces from: more spreads the load and rides out a slow parent,
    fewer keeps each parent's upload (and this node's connections) small."""
    lanes_per_parent: int = _RULES.lanes_per_parent
    """piece requests in flight to one parent: more hides latency, fewer shares a busy parent."""
    stall_timeout: float = _RULES.stall_timeout
    """seconds without progress before the rest of the blob comes from the origin. Keep it longer
    than the scheduler's lease TTL (15 s) so a dead fetcher's successor takes over first; shorter
    falls back to the registry sooner, and pays for it in registry traffic."""
    hash_wait: float = _RULES.hash_wait
    """seconds a received piece waits for its published hash before it is discarded."""
    parent_errors: int = _RULES.parent_errors
    """failed requests in a row that drop a parent."""
    refused_asks: int = _RULES.refused_asks
    """fallback asks refused in a row without progress, each beside a complete copy the
    scheduler named, before a download reads the registry without a lease (it cannot reach
    that copy)."""
    avoid_corrupt_for: float = _RULES.avoid_corrupt_for
    """seconds a peer that sent a corrupt piece is not used again."""
    scheduler_failures: int = _RULES.scheduler_failures
    """failed scheduler reports in a row that (with ``scheduler_lost_grace``) end the swarm's part."""
    scheduler_lost_grace: float = _RULES.scheduler_lost_grace
    """seconds without progress, after ``scheduler_failures``, before the origin takes over."""
    window: int = _RULES.window
    """pieces ahead of the reader wanted in order; the rest rarest first."""
    piece_timeout: float = _RULES.piece_timeout
    """seconds a piece request may go unanswered before it is cancelled and counted as failed:
    shorter drops a slow parent sooner, too short fails pieces that a throttled parent would send."""
    max_requests: int = _RULES.max_requests
    """requests in flight for one download over all its parents (each arriving piece holds a
    buffer until it is written: this bounds a download's memory)."""
    endgame_after: float = _RULES.endgame_after
    """seconds a request of one of the last pieces is out before a second parent is asked."""
    max_unverified: int = _RULES.max_unverified
    """bytes of received pieces that may wait for their published hash (with the requests in
    flight); beyond, no new requests until hashes come."""
    report_interval: float = _RULES.report_interval
    """least seconds between two reports of one download to the scheduler."""
    heartbeat: float = _RULES.heartbeat
    """seconds after which a download reports with nothing new; keeps the fetcher's lease
    (the scheduler's lease TTL is 15 s), so it must stay well below that."""
    connect_timeout: float = _SWARM.connect_timeout
    """seconds to open a link to a parent (a parent busy serving others can take seconds)."""
    status_wait: float = _SWARM.status_wait
    """seconds a long-poll of the scheduler for piece hashes waits."""
    seed_announce_interval: float = _SWARM.seed_announce_interval
    """seconds between announcements of the blobs this agent seeds."""
    max_seeding: int = _SWARM.max_seeding
    """blobs announced as seeds at most (the most recent ones)."""
    superseed_copies: int = _SWARM.superseed_copies
    """children each new piece is sent to while this agent fetches the blob from the origin;
    the others get it from those children: less upload here, one more hop for them."""
    max_peer_links: int = _HUB.max_links
    """peer links (in and out) open at once; beyond it new ones are refused. Each costs a file
    descriptor and its buffers, apart from ``max_connections`` (which counts HTTP clients)."""
    peer_links_per_address: int = _HUB.peer_links_per_address
    """links other nodes may open to this one from one address: a node dials from its own, so a
    few suffice; raise it only in a lab that runs many agents on one address."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise SwarmSettingsError(f"swarm.{f.name}: want a whole number, not {value!r}")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SwarmSettingsError(f"swarm.{f.name}: want a number of seconds or a duration such as 25s")
            if not value > 0:
                raise SwarmSettingsError(f"swarm.{f.name}: must be positive, not {value!r}")

    def advice(self) -> list[str]:
        """Values that work but defeat the scheduler's lease (for the agent to log at start)."""
        out = []
        if self.stall_timeout <= SCHEDULER_LEASE_TTL:
            out.append(
                f"swarm.stall_timeout {self.stall_timeout:g}s is not longer than the scheduler's lease TTL "
                f"({SCHEDULER_LEASE_TTL:g}s): a stalled download goes to the registry before a new "
                "fetcher can take over, and the registry serves that blob more than once"
            )
        if self.heartbeat >= SCHEDULER_LEASE_TTL:
            out.append(
                f"swarm.heartbeat {self.heartbeat:g}s is not shorter than the scheduler's lease TTL "
                f"({SCHEDULER_LEASE_TTL:g}s): an idle origin fetcher loses its lease while it fetches"
            )
        return out


_DURATIONS = frozenset(f.name for f in fields(SwarmSettings) if f.type == "float")


def parse_swarm(values: Any) -> SwarmSettings:
    """The ``swarm:`` mapping of a YAML config (durations as ``25s`` allowed; ``-`` as ``_``)."""
    if not isinstance(values, Mapping):
        raise SwarmSettingsError(f"swarm: want a mapping of keys, not {values!r}")
    known = {f.name for f in fields(SwarmSettings)}
    items = {str(k).replace("-", "_"): v for k, v in values.items() if v is not None}
    unknown = set(items) - known
    if unknown:
        raise SwarmSettingsError(f"swarm: unknown keys: {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for key, value in items.items():
        if key in _DURATIONS and isinstance(value, str | int | float) and not isinstance(value, bool):
            try:
                value = parse_duration(value)
            except ValueError as exc:
                raise SwarmSettingsError(f"swarm.{key}: {exc}") from None
        kwargs[key] = value
    return SwarmSettings(**kwargs)


def swarm_configs(
    settings: SwarmSettings, address: str, token: str | None, tls: TlsContexts | None = None
) -> tuple[SwarmConfig, HubConfig]:
    """The swarm's and the peer hub's configs for an agent reached at ``address`` (its peer
    wire in TLS with ``tls``, else in clear)."""
    rules = DownloadRules(
        max_parents=settings.max_parents,
        lanes_per_parent=settings.lanes_per_parent,
        stall_timeout=settings.stall_timeout,
        hash_wait=settings.hash_wait,
        parent_errors=settings.parent_errors,
        refused_asks=settings.refused_asks,
        avoid_corrupt_for=settings.avoid_corrupt_for,
        scheduler_failures=settings.scheduler_failures,
        scheduler_lost_grace=settings.scheduler_lost_grace,
        window=settings.window,
        piece_timeout=settings.piece_timeout,
        endgame_after=settings.endgame_after,
        max_requests=settings.max_requests,
        max_unverified=settings.max_unverified,
        report_interval=settings.report_interval,
        heartbeat=settings.heartbeat,
    )
    swarm = SwarmConfig(
        peer_id=address,
        address=address,
        token=token,
        rules=rules,
        connect_timeout=settings.connect_timeout,
        status_wait=settings.status_wait,
        seed_announce_interval=settings.seed_announce_interval,
        max_seeding=settings.max_seeding,
        superseed_copies=settings.superseed_copies,
    )
    hub = HubConfig(
        peer_id=address,
        secret=peer_secret(token),
        connect_timeout=settings.connect_timeout,
        max_links=settings.max_peer_links,
        peer_links_per_address=settings.peer_links_per_address,
        superseed_copies=settings.superseed_copies,
        tls=tls,
    )
    return swarm, hub
