"""Warm every agent (or some) with an image before a rollout: ``shoal preheat``.

The agents are found through the schedulers (they announce themselves at start); each chosen
agent is asked to pull the image through its own mirror (``shoal.p2p.preheat``), all at once,
as in a rollout, so the registry serves each blob once. Choosing nodes and summing up are
pure functions; only :func:`preheat` does I/O.

The request carries the peer token and the user's registry credentials, so it goes to each
agent over TLS, the agent's certificate verified against the cluster's CA and required to
name the agent's address (``shoal.p2p.node_https``). Plain HTTP is for agents on this host,
or labs that say so (:func:`clear_text_refusal`).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from shoal.core.error_body import http_error
from shoal.core.hosts import is_loopback_host
from shoal.core.units import format_bytes
from shoal.ops.failures import describe_call
from shoal.p2p.node_https import agent_client_context
from shoal.p2p.preheat import PREHEAT_PATH, PreheatRequest
from shoal.p2p.presence import AgentAnnouncement
from shoal.p2p.protocol import bearer, to_json

Event = dict[str, Any]
OnEvent = Callable[[AgentAnnouncement, Event], None]


class SelectionError(ValueError):
    """``--nodes`` names agents the schedulers do not know, or asks for more than there are."""


@dataclass(slots=True)
class NodeResult:
    """How preheating one agent went."""

    agent: AgentAnnouncement
    held: bool = False
    blobs: int = 0
    bytes: int = 0
    done_blobs: int = 0
    fetched: int = 0
    missing: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.agent.node} ({self.agent.address})" if self.agent.node else self.agent.address


def select_nodes(agents: Sequence[AgentAnnouncement], nodes: str | None) -> list[AgentAnnouncement]:
    """``None``: all; ``"3"``: the first three by address; ``"a,b"``: those addresses, hosts or node names."""
    ordered = sorted(agents, key=lambda a: a.address)
    if nodes is None or not nodes.strip():
        return ordered
    text = nodes.strip()
    if text.isdigit():
        count = int(text)
        if count < 1 or count > len(ordered):
            raise SelectionError(f"--nodes {count}: the schedulers know {len(ordered)} agents")
        return ordered[:count]
    chosen: list[AgentAnnouncement] = []
    unknown = []
    for name in (n.strip() for n in text.split(",")):
        if not name:
            continue
        match = [a for a in ordered if name in (a.address, a.node, a.address.rpartition(":")[0])]
        if not match:
            unknown.append(name)
        chosen.extend(a for a in match if a not in chosen)
    if unknown:
        known = ", ".join(a.node or a.address for a in ordered) or "none"
        raise SelectionError(f"--nodes: no agent {', '.join(unknown)} (known: {known})")
    return chosen


def _on_this_host(address: str) -> bool:
    return is_loopback_host(address.rpartition(":")[0])


def clear_text_refusal(agents: Sequence[AgentAnnouncement], secrets: list[str]) -> str | None:
    """Why preheating ``agents`` over plain HTTP would give away ``secrets`` (what the request
    carries, e.g. "the peer token"), or None: only agents on this host are reached in clear."""
    remote = [a.address for a in agents if not _on_this_host(a.address)]
    if not remote or not secrets:
        return None
    more = f" and {len(remote) - 1} more" if len(remote) > 1 else ""
    return (
        f"agent {remote[0]}{more}: plain HTTP would send {' and '.join(secrets)} in clear; "
        "give --ca (the cluster's CA certificate), or --insecure-agent-http in a lab"
    )


def summarize(image: str, results: Sequence[NodeResult], seconds: float) -> str:
    """The closing lines: which nodes hold the image, which do not and why."""
    held = [r for r in results if r.held]
    size = max((r.bytes for r in results), default=0)
    blobs = max((r.blobs for r in results), default=0)
    lines = [
        f"{len(held)}/{len(results)} nodes hold {image} ({blobs} blobs, {format_bytes(size)}) after {seconds:.1f} s"
    ]
    for r in results:
        if not r.held:
            why = r.error or f"{len(r.missing)} of {r.blobs} blobs missing: {', '.join(m[:19] for m in r.missing)}"
            lines.append(f"  FAILED {r.name}: {why}")
    return "\n".join(lines)


def apply_event(result: NodeResult, event: Event) -> None:
    kind = event.get("event")
    if kind == "manifest":
        result.blobs, result.bytes = int(event["blobs"]), int(event["bytes"])
    elif kind == "blob" and "error" not in event:
        result.done_blobs += 1
    elif kind == "done":
        result.held = bool(event["held"])
        result.fetched = int(event["fetched"])
        result.missing = [str(d) for d in event.get("missing", [])]
    elif kind == "error":
        result.error = str(event.get("error"))


async def preheat_node(
    session: aiohttp.ClientSession,
    agent: AgentAnnouncement,
    request: PreheatRequest,
    token: str | None,
    on_event: OnEvent | None = None,
    tls: ssl.SSLContext | None = None,
) -> NodeResult:
    """Ask one agent to pull the image (over TLS with ``tls``); never raises (failures are in
    the result)."""
    result = NodeResult(agent)
    started = time.monotonic()
    url = f"{'https' if tls is not None else 'http'}://{agent.address}"
    try:
        async with session.post(
            f"{url}{PREHEAT_PATH}", json=to_json(request), headers=bearer(token), ssl=tls if tls is not None else True
        ) as resp:
            if resp.status != 200:
                result.error = f"the agent answered {http_error(resp.status, await resp.read())}"
            else:
                async for line in resp.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    apply_event(result, event)
                    if on_event is not None:
                        on_event(agent, event)
                if not result.held and result.error is None and not result.missing:
                    result.error = "the agent ended the answer early"
    except (aiohttp.ClientError, TimeoutError, ValueError, ssl.SSLError) as exc:
        result.error = describe_call(exc, "the agent", url)
    result.seconds = time.monotonic() - started
    return result


async def preheat(
    agents: Sequence[AgentAnnouncement],
    request: PreheatRequest,
    token: str | None,
    *,
    ca: Path | None = None,
    on_event: OnEvent | None = None,
    timeout: float = 3600.0,
) -> list[NodeResult]:
    """Preheat every agent in ``agents`` at the same time; results in the same order. With
    ``ca``, over TLS (agents' certificates must chain to it); else in clear."""
    tls = agent_client_context(ca) if ca is not None else None
    client_timeout = aiohttp.ClientTimeout(total=timeout, connect=10)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        return list(await asyncio.gather(*(preheat_node(session, a, request, token, on_event, tls) for a in agents)))


def preheat_nodes_json(image: str, results: Sequence[NodeResult], seconds: float) -> dict[str, Any]:
    """The summary for ``--json``."""
    return {
        "image": image,
        "ok": all(r.held for r in results),
        "seconds": round(seconds, 3),
        "nodes": [
            {
                "address": r.agent.address,
                "node": r.agent.node,
                "held": r.held,
                "blobs": r.blobs,
                "bytes": r.bytes,
                "fetched": r.fetched,
                "missing": r.missing,
                "error": r.error,
                "seconds": round(r.seconds, 3),
            }
            for r in results
        ],
    }
