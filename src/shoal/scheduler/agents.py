"""The agents a scheduler has heard from: soft state, refreshed by each agent's announcements.

Kept apart from the task state (``state.py``): the swarm never reads it; it exists so
``shoal preheat`` and ``shoal status`` can find every agent of the cluster by asking any
scheduler replica. Handlers call synchronous methods only (atomic on the event loop).
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge

from shoal.p2p.presence import (
    AGENT_TTL,
    AgentAnnouncement,
    AgentView,
    agents_to_json,
    announcement_from_json,
    plain_hostport,
)
from shoal.scheduler.peer_ids import PeerIds
from shoal.scheduler.tls import refuse_if_foreign, request_identity

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_AGENTS = 100_000
"""a bound on memory: announcements beyond it (from new peer ids) are refused."""


class AgentDirectory:
    """Live agents by peer id; ``now`` is seconds on a monotonic clock.

    Parameters:
        ttl: an agent not heard from for this long is no longer listed (and is dropped).
        clock: monotonic seconds (tests pass a fake).
        node_certificates: announcements come over mutual TLS and must name the node of the
            caller's certificate (its name and an address of it); otherwise the address must be
            the one the request comes from.
        peer_ids: with node certificates, bounds the peer ids one node announces.
    """

    def __init__(
        self,
        ttl: float = AGENT_TTL,
        clock: Callable[[], float] = time.monotonic,
        *,
        node_certificates: bool = False,
        peer_ids: PeerIds | None = None,
    ) -> None:
        self.ttl = ttl
        self.clock = clock
        self.node_certificates = node_certificates
        self.peer_ids = peer_ids
        self._agents: dict[str, tuple[AgentAnnouncement, float]] = {}

    def announce(self, announcement: AgentAnnouncement) -> bool:
        """Record (or refresh) an agent; False when the directory is full of other agents."""
        now = self.clock()
        if announcement.peer_id not in self._agents and len(self._agents) >= MAX_AGENTS:
            self.expire()
            if len(self._agents) >= MAX_AGENTS:
                return False
        self._agents[announcement.peer_id] = (announcement, now)
        return True

    def expire(self) -> None:
        now = self.clock()
        self._agents = {k: v for k, v in self._agents.items() if now - v[1] < self.ttl}

    def live(self) -> list[AgentView]:
        """Agents heard from within ``ttl``, ordered by address."""
        self.expire()
        now = self.clock()
        views = [AgentView(a, now - seen) for a, seen in self._agents.values()]
        return sorted(views, key=lambda v: v.announcement.address)

    def add_routes(
        self,
        app: web.Application,
        post_guard: Callable[[Handler], Handler] = lambda handler: handler,
        get_guard: Callable[[Handler], Handler] = lambda handler: handler,
    ) -> None:
        """The guards wrap the handlers (the scheduler's check the caller's credential)."""
        app.router.add_post("/v1/agents", post_guard(self._post))
        app.router.add_get("/v1/agents", get_guard(self._get))

    def add_metrics(self, registry: CollectorRegistry) -> None:
        gauge = Gauge("shoal_scheduler_agents", "Agents that announced themselves within the TTL.", registry=registry)
        gauge.set_function(lambda: len(self.live()))

    async def _post(self, request: web.Request) -> web.Response:
        try:
            announcement = announcement_from_json(await request.json())
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
            raise web.HTTPBadRequest(text=f"announcement: {exc}\n") from None
        if self.node_certificates:
            identity = request_identity(request.transport)
            if identity is None:
                raise web.HTTPUnauthorized(text="announcement: a node certificate is required\n")
            refuse_if_foreign(identity, announcement.peer_id, announcement.address, announcement.node, self.peer_ids)
            refusal = None
        else:
            refusal = foreign_announcement(announcement.address, request.remote)
        if refusal is not None:
            raise web.HTTPForbidden(text=f"announcement: {refusal}\n")
        if not self.announce(announcement):
            raise web.HTTPServiceUnavailable(text="agent directory full\n")
        return web.json_response({"ttl": self.ttl})

    async def _get(self, request: web.Request) -> web.Response:
        return web.json_response(agents_to_json(self.live()))


def foreign_announcement(address: str, source: str | None) -> str | None:
    """Why an agent may not announce ``address`` from ``source`` (the request's peer), or None.

    ``shoal preheat`` sends registry credentials to the addresses in this list, and every node
    holds the peer secret: a node announcing someone else's address (or a listener of its own
    under another node's name) would collect them. So an agent announces only the address it
    connects from; loopback may announce loopback (one machine: the demo and the tests).
    """
    try:
        announced = ipaddress.ip_address(plain_hostport(address)[0])
        seen = ipaddress.ip_address(source or "")
    except ValueError:
        return f"{address!r} is not IP:PORT, or the request has no source address"
    if announced == seen or (announced.is_loopback and seen.is_loopback):
        return None
    return f"{address} announced from {source}: an agent announces the address it connects from"
