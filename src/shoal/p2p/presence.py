"""What an agent tells every scheduler about itself, so operators' tools can find all agents.

``POST /v1/agents`` — body :class:`AgentAnnouncement`: "this agent is alive, here it is".
    Every agent sends it to *every* scheduler when it starts and every
    ``ANNOUNCE_INTERVAL`` seconds after, whether or not it pulls anything; a scheduler
    forgets an agent not heard from for ``AGENT_TTL``.

``GET /v1/agents`` — answer ``{"agents": [AgentView, ...]}``: the live agents, by address.

``shoal preheat`` and ``shoal status`` read the list; the swarm does not use it (parents
come from the tasks). Like the task API, both calls need the peer token.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from shoal.p2p.protocol import from_json, to_json

ANNOUNCE_INTERVAL = 10.0
"""seconds between an agent's announcements."""
AGENT_TTL = 35.0
"""seconds after its last announcement that a scheduler drops an agent (three missed rounds)."""


_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_PORT = re.compile(r"[0-9]{1,5}")


def plain_hostport(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT`` where HOST is an IP literal (IPv6 in brackets) or a DNS
    name, and nothing else: no userinfo, path, query or ``@``.

    Announced addresses become URLs (``http://{address}``) in ``shoal status`` and
    ``shoal preheat``: ``10.0.0.5:1@otherhost`` there would reach ``otherhost``.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not _PORT.fullmatch(port) or not 0 < int(port) < 65536:
        raise ValueError(f"address {address[:80]!r}: want HOST:PORT with a port in 1..65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"address {address[:80]!r}: {host[:60]} is not an IPv6 address") from None
        return host[1:-1], int(port)
    try:
        ipaddress.IPv4Address(host)
        return host, int(port)
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        raise ValueError(f"address {address[:80]!r}: want an IP address or a DNS name before the port")
    return host, int(port)


@dataclass(frozen=True, slots=True)
class AgentAnnouncement:
    peer_id: str
    address: str
    """host:port where the agent's mirror and peer endpoints answer."""
    version: str = ""
    node: str = ""
    """the Kubernetes node name (``$NODE_NAME``), when the agent knows it."""
    registries: list[str] = field(default_factory=list)
    """registry names the agent mirrors."""
    schedulers: list[str] = field(default_factory=list)
    """the agent's ``--scheduler`` list: every replica should appear in every agent's list."""
    cache_bytes: int = 0
    cache_max_bytes: int | None = None
    started: float = 0.0
    """Unix time the agent started."""


@dataclass(frozen=True, slots=True)
class AgentView:
    """One agent as a scheduler knows it."""

    announcement: AgentAnnouncement
    age: float
    """seconds since its last announcement."""


def announcement_from_json(data: Any) -> AgentAnnouncement:
    value: AgentAnnouncement = from_json(AgentAnnouncement, data)
    if not value.peer_id:
        raise ValueError("AgentAnnouncement: peer_id is required")
    plain_hostport(value.address)
    return value


def agents_to_json(views: list[AgentView]) -> dict[str, Any]:
    return {"agents": [{**to_json(v.announcement), "age": round(v.age, 3)} for v in views]}


def agents_from_json(data: Any) -> list[AgentView]:
    if not isinstance(data, dict) or not isinstance(data.get("agents"), list):
        raise ValueError('agent list: want {"agents": [...]}')
    views = []
    for item in data["agents"]:
        if not isinstance(item, dict):
            raise ValueError("agent list: want objects")
        fields = dict(item)
        age = float(fields.pop("age", 0.0))
        try:
            views.append(AgentView(announcement_from_json(fields), age))
        except ValueError:
            continue  # an entry an older scheduler let through: never contacted, never shown
    return views
