"""Find the cluster's agents by asking the schedulers (any replica knows every live agent)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from shoal.ops.failures import HttpStatusError, describe_call
from shoal.p2p.presence import AgentView, agents_from_json
from shoal.p2p.protocol import bearer

TIMEOUT = aiohttp.ClientTimeout(total=10, connect=3)


@dataclass(frozen=True, slots=True)
class AgentList:
    agents: list[AgentView]
    """the union over the schedulers that answered, freshest announcement first per agent."""
    errors: dict[str, str]
    """scheduler URL -> why it gave no list, in words (the ones that answered are not here)."""
    refused: tuple[str, ...] = ()
    """schedulers that refused the peer token (HTTP 401 or 403)."""


async def _one(session: aiohttp.ClientSession, base: str, token: str | None) -> list[AgentView]:
    async with session.get(f"{base}/v1/agents", headers=bearer(token), timeout=TIMEOUT) as resp:
        if resp.status != 200:
            raise HttpStatusError(resp.status, await resp.read())
        return agents_from_json(await resp.json(content_type=None))


async def list_agents(session: aiohttp.ClientSession, schedulers: Sequence[str], token: str | None) -> AgentList:
    """Every agent any of ``schedulers`` knows, by address; errors per scheduler, never raises."""
    bases = [s.rstrip("/") for s in dict.fromkeys(schedulers)]
    results = await asyncio.gather(*(_one(session, b, token) for b in bases), return_exceptions=True)
    seen: dict[str, AgentView] = {}
    errors: dict[str, str] = {}
    refused: list[str] = []
    for base, result in zip(bases, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result
            errors[base] = describe_call(result, "the scheduler", base)
            if isinstance(result, HttpStatusError) and result.status in (401, 403):
                refused.append(base)
            continue
        for view in result:
            known = seen.get(view.announcement.peer_id)
            if known is None or view.age < known.age:
                seen[view.announcement.peer_id] = view
    agents = sorted(seen.values(), key=lambda v: v.announcement.address)
    return AgentList(agents, errors, tuple(refused))
