"""The agent's client for the scheduler API (``shoal.p2p.protocol``), with failover.

Each digest has its own order of schedulers (:func:`rank_schedulers`); a call goes to the
first one and moves down the list on connection errors, timeouts and 5xx answers. A
scheduler that failed is tried last for a short while, so a dead one costs one failed
attempt, not one per call. When every scheduler fails the call raises
:class:`SchedulerUnavailable`; the swarm then falls back to the origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import fields
from typing import Any, TypeVar

import aiohttp

from shoal.p2p.enrollment import SchedulerTls
from shoal.p2p.presence import AgentAnnouncement, AgentView, agents_from_json
from shoal.p2p.protocol import FULL_HEADER, HashesView, JoinRequest, Report, TaskView, bearer, from_json, to_json
from shoal.p2p.rendezvous import rank_schedulers

log = logging.getLogger(__name__)
T = TypeVar("T")

TOTAL_TIMEOUT = 15.0
"""seconds one call to one scheduler may take: connect, TLS handshake, queueing, answer.
A refused or reset connection fails over at once; this bounds a scheduler that is slow."""
CONNECT_TIMEOUT = TOTAL_TIMEOUT
"""what a scheduler that never answers costs one call. There is no shorter bound for the
connect alone: aiohttp's connect bounds include the TLS handshake, and a caller that gives up
on a handshake queued at a busy scheduler leaves it the handshake's work all the same, then
queues its retry behind everyone else's (docs/scheduler.md, "Connections")."""
DOWN_FOR = 10.0
"""seconds a failed scheduler goes to the end of every ranking."""
CALLS_IN_FLIGHT = 2
"""short calls (join, report, leave, announce, list) in flight from one HTTP session to one
scheduler, at most; the others wait for one of these connections. Every call beyond the open
connections would open one more, and a TLS handshake costs the scheduler as much CPU as ~15
calls on a kept-alive connection. Hashes long-polls hold a connection each and do not count,
nor do reports carrying piece hashes (children wait for those), nor the reports of a lease
holder (the scheduler moves a named fetcher's lease after 5 s without one)."""

_SLOTS: weakref.WeakKeyDictionary[aiohttp.ClientSession, dict[str, asyncio.Semaphore]] = weakref.WeakKeyDictionary()
"""per session (its connection pool), per scheduler: the short calls' slots; shared by every
client of one agent (swarm, presence, cluster listing)."""


class SchedulerUnavailable(Exception):
    """No scheduler answered the call (or one refused it: see :class:`SchedulerRejected`)."""


class CallsQueued(SchedulerUnavailable):
    """This agent's own short calls to a scheduler held every slot for :data:`TOTAL_TIMEOUT`:
    the call was never sent, so the scheduler is neither marked down nor failed over from
    (another replica does not own the digest, and would start a second task)."""


class SchedulerRejected(SchedulerUnavailable):
    """A scheduler answered 4xx (the request or the peer token is wrong), or 503 with
    ``FULL_HEADER`` (it tracks all the tasks it may): other schedulers are not tried, and the
    blob comes from the origin at once."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"scheduler answered {status}: {message}")
        self.status = status


def _timeout(wait: float = 0.0) -> aiohttp.ClientTimeout:
    """One bound for the whole call (see :data:`CONNECT_TIMEOUT`)."""
    return aiohttp.ClientTimeout(total=wait + TOTAL_TIMEOUT)


_TASK_VIEW_FIELDS = frozenset(f.name for f in fields(TaskView))


def _task_view(data: Any) -> TaskView:
    """A scheduler's answer; fields this agent does not know are left out, so a newer
    scheduler (mid-upgrade) does not send every pull to the registry."""
    if isinstance(data, dict) and not data.keys() <= _TASK_VIEW_FIELDS:
        data = {k: v for k, v in data.items() if k in _TASK_VIEW_FIELDS}
    view: TaskView = from_json(TaskView, data)
    return view


def _hashes_view(data: Any) -> HashesView:
    view: HashesView = from_json(HashesView, data)
    return view


class SchedulerClient:
    """Calls the scheduler that owns each digest.

    Parameters:
        session: the agent's HTTP session (not closed here).
        schedulers: base URLs such as ``https://10.0.0.5:8002``.
        token: the shared peer secret, sent as ``Authorization: Bearer`` to plain-HTTP
            schedulers only: over TLS the node certificate is the credential, and the
            secret stays on the node.
        clock: monotonic seconds, for the failed-scheduler cool-down.
        tls: the context for https schedulers (verifies them, presents the node certificate).
        zone: this node's topology zone, added to every join and report that has none.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        schedulers: Sequence[str],
        token: str | None,
        clock: Callable[[], float] = time.monotonic,
        tls: SchedulerTls | None = None,
        zone: str = "",
    ) -> None:
        if not schedulers:
            raise ValueError("SchedulerClient needs at least one scheduler URL")
        self.session = session
        self.schedulers = [url.rstrip("/") for url in schedulers]
        self.headers = bearer(token)
        self.clock = clock
        self.tls = tls
        self.zone = zone
        self._down_until: dict[str, float] = {}
        self._fetching: set[str] = set()
        """digests whose last answer named this agent the lease holder"""

    def ranked(self, digest: str) -> list[str]:
        """The schedulers to try for ``digest``, in order (recently failed ones last)."""
        now = self.clock()
        ranked = rank_schedulers(digest, self.schedulers)
        return sorted(ranked, key=lambda url: self._down_until.get(url, 0.0) > now)

    async def join(self, digest: str, request: JoinRequest) -> TaskView:
        body = to_json(request)
        if self.zone and not request.zone:
            body["zone"] = self.zone
        return self._holder(digest, request.peer_id, await self._call("POST", digest, "join", _task_view, json=body))

    async def report(self, digest: str, report: Report) -> TaskView:
        body = to_json(report)
        if self.zone and not report.zone:
            body["zone"] = self.zone
        body["hashes"] = {str(k): v for k, v in report.hashes.items()}
        # piece hashes are on every child's critical path, and a lease holder's silence moves
        # its lease: they do not queue behind this agent's other short calls
        own = bool(report.hashes) or digest in self._fetching
        view = await self._call("POST", digest, "report", _task_view, json=body, own_slot=own)
        return self._holder(digest, report.peer_id, view)

    def _holder(self, digest: str, peer_id: str, view: TaskView) -> TaskView:
        """Note whether ``view`` names us the lease holder of ``digest``; returns it."""
        if view.fetcher == peer_id:
            self._fetching.add(digest)
        else:
            self._fetching.discard(digest)
        return view

    async def hashes(self, digest: str, start: int, wait: float = 0.0) -> HashesView:
        params = {"from": str(start), "wait": str(wait)}
        timeout = _timeout(wait)
        return await self._call(
            "GET", digest, "hashes", _hashes_view, params=params, timeout=timeout, own_slot=wait > 0
        )

    async def leave(self, digest: str, peer_id: str) -> None:
        self._fetching.discard(digest)
        await self._call("POST", digest, "leave", lambda data: None, json={"peer_id": peer_id})

    def _transport(self, base: str) -> dict[str, Any]:
        """Per-request arguments for ``base``: the TLS context, or the peer token in clear."""
        if base.startswith("https://"):
            if self.tls is None:
                raise ssl.SSLError(f"{base}: no TLS directory to verify the scheduler with (--tls-dir)")
            return {"ssl": self.tls.context()}
        return {"headers": self.headers}

    @contextlib.asynccontextmanager
    async def _slot(self, base: str, own: bool = False) -> AsyncIterator[None]:
        """Hold one of the short calls' slots towards ``base`` (:class:`CallsQueued` after
        :data:`TOTAL_TIMEOUT`); a long-poll or a report with piece hashes (``own``) passes
        straight through, on a connection of its own when the shared ones are busy."""
        if own:
            yield
            return
        slots = _SLOTS.setdefault(self.session, {})
        slot = slots.get(base)
        if slot is None:
            slot = slots[base] = asyncio.Semaphore(CALLS_IN_FLIGHT)
        try:
            async with asyncio.timeout(TOTAL_TIMEOUT):
                await slot.acquire()
        except TimeoutError:
            raise CallsQueued(
                f"{base}: this agent's {CALLS_IN_FLIGHT} calls in flight for {TOTAL_TIMEOUT:g}s; not sent"
            ) from None
        try:
            yield
        finally:
            slot.release()

    async def announce(self, announcement: AgentAnnouncement) -> dict[str, str | None]:
        """Tell *every* scheduler this agent exists; per URL, None or the error (never raises)."""

        async def one(base: str) -> str | None:
            timeout = _timeout()
            try:
                async with (
                    self._slot(base),
                    self.session.post(
                        f"{base}/v1/agents", json=to_json(announcement), timeout=timeout, **self._transport(base)
                    ) as resp,
                ):
                    if resp.status >= 400:
                        return f"HTTP {resp.status}: {(await resp.text()).strip()[:200]}"
            except (aiohttp.ClientError, TimeoutError, OSError, CallsQueued) as exc:
                return f"{type(exc).__name__}: {exc}"
            return None

        results = await asyncio.gather(*(one(base) for base in self.schedulers))
        return dict(zip(self.schedulers, results, strict=True))

    async def agents(self) -> list[AgentView]:
        """The live agents, as the first scheduler that answers lists them."""
        timeout = _timeout()
        errors: list[str] = []
        for base in self.schedulers:
            try:
                async with (
                    self._slot(base),
                    self.session.get(f"{base}/v1/agents", timeout=timeout, **self._transport(base)) as resp,
                ):
                    if resp.status != 200:
                        errors.append(f"{base}: HTTP {resp.status}")
                        continue
                    return agents_from_json(await resp.json())
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError, CallsQueued) as exc:
                errors.append(f"{base}: {type(exc).__name__}: {exc}")
        raise SchedulerUnavailable("; ".join(errors) or "no scheduler")

    async def _call(
        self,
        method: str,
        digest: str,
        action: str,
        parse: Callable[[Any], T],
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
        own_slot: bool = False,
    ) -> T:
        timeout = timeout or _timeout()
        errors: list[str] = []
        for base in self.ranked(digest):
            url = f"{base}/v1/tasks/{digest}/{action}"
            try:
                async with (
                    self._slot(base, own_slot),
                    self.session.request(
                        method, url, json=json, params=params, timeout=timeout, **self._transport(base)
                    ) as resp,
                ):
                    if resp.status == 503 and resp.headers.get(FULL_HEADER):
                        raise SchedulerRejected(resp.status, (await resp.text()).strip()[:500])
                    if resp.status >= 500:
                        raise aiohttp.ClientResponseError(
                            resp.request_info, resp.history, status=resp.status, message=resp.reason or ""
                        )
                    if resp.status >= 400:
                        text = (await resp.text()).strip()
                        raise SchedulerRejected(resp.status, text[:500])
                    result = parse(await resp.json())
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError, TypeError) as exc:
                errors.append(f"{base}: {type(exc).__name__}: {exc}")
                self._down_until[base] = self.clock() + DOWN_FOR
                log.debug("scheduler %s failed on %s %s: %r", base, action, digest, exc)
                continue
            self._down_until.pop(base, None)
            return result
        raise SchedulerUnavailable("; ".join(errors) or "no scheduler")
