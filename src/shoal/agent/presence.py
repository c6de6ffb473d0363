"""The agent makes itself known: it announces itself to every scheduler from the moment it starts.

Schedulers otherwise learn of an agent only when it pulls, so ``shoal preheat`` could not warm
a node that has pulled nothing yet. Every ``ANNOUNCE_INTERVAL`` the agent posts an
:class:`~shoal.p2p.presence.AgentAnnouncement` to each ``--scheduler`` URL and remembers,
per scheduler, when it last got through and the last error: ``GET /p2p/v1/node`` shows that
(with the cache use and the runtime-facing settings) to ``shoal status``. Nothing there is a
secret, so that route needs no peer token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from shoal import __version__
from shoal.agent.config import AgentConfig
from shoal.p2p.enrollment import SchedulerTls
from shoal.p2p.presence import ANNOUNCE_INTERVAL, AgentAnnouncement
from shoal.p2p.protocol import to_json
from shoal.p2p.scheduler_client import SchedulerClient
from shoal.store.blobstore import BlobStore

log = logging.getLogger(__name__)

NODE_NAME_ENV = "NODE_NAME"
FIRST_CERTIFICATE_WAIT = 10.0
"""seconds the first announcement waits for the node's first certificate."""


@dataclass(slots=True)
class SchedulerContact:
    """How the last announcements to one scheduler went (times are Unix seconds)."""

    last_ok: float | None = None
    last_error: str | None = None
    last_attempt: float | None = None

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "reachable": self.last_attempt is not None and self.last_error is None,
            "last_ok_age": None if self.last_ok is None else round(now - self.last_ok, 3),
            "error": self.last_error,
        }


class Presence:
    """Announces the agent to its schedulers and serves ``GET /p2p/v1/node``.

    Parameters:
        config: the agent's configuration (schedulers, registries, addresses, cache cap).
        store: the agent's cache, for its size.
        session: the agent's HTTP session (not closed here).
        interval: seconds between announcement rounds.
        clock: Unix seconds.
        tls: the context for https schedulers.
        ready: set once this node holds its certificate; the first round waits for it (a
            little), so it is not refused for want of one.
    """

    def __init__(
        self,
        config: AgentConfig,
        store: BlobStore,
        session: aiohttp.ClientSession,
        *,
        interval: float = ANNOUNCE_INTERVAL,
        clock: Callable[[], float] = time.time,
        tls: SchedulerTls | None = None,
        ready: asyncio.Event | None = None,
    ) -> None:
        self.config = config
        self.ready = ready
        self.store = store
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self.contacts = {url.rstrip("/"): SchedulerContact() for url in config.schedulers}
        self._client = (
            SchedulerClient(session, list(config.schedulers), config.peer_token(), tls=tls)
            if config.p2p_enabled and config.schedulers
            else None
        )
        self._task: asyncio.Task[None] | None = None
        self.first_round = asyncio.Event()

    def announcement(self) -> AgentAnnouncement:
        address = self.config.advertise_address
        return AgentAnnouncement(
            peer_id=address,
            address=address,
            version=__version__,
            node=os.environ.get(NODE_NAME_ENV, ""),
            registries=sorted(self.config.registries),
            schedulers=list(self.contacts),
            cache_bytes=self.store.total_size,
            cache_max_bytes=self.config.cache_max_size,
            started=self.started,
        )

    def start(self) -> None:
        if self._client is not None and self._task is None:
            self._task = asyncio.create_task(self._announce_periodically(), name="agent presence")
        else:
            self.first_round.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def announce_once(self) -> None:
        assert self._client is not None
        results = await self._client.announce(self.announcement())
        now = self.clock()
        for url, error in results.items():
            contact = self.contacts[url]
            if error is not None and contact.last_error != error:
                log.warning("cannot announce this agent to scheduler %s: %s", url, error)
            contact.last_attempt, contact.last_error = now, error
            if error is None:
                contact.last_ok = now

    async def _announce_periodically(self) -> None:
        if self.ready is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ready.wait(), FIRST_CERTIFICATE_WAIT)
        while True:
            try:
                await self.announce_once()
            except Exception:  # a bug here must not stop the announcements for good
                log.exception("agent announcement failed")
            self.first_round.set()
            await asyncio.sleep(self.interval)

    # -- GET /p2p/v1/node ----------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/p2p/v1/node", self._node)

    def node_json(self) -> dict[str, Any]:
        now = self.clock()
        return {
            **{k: v for k, v in to_json(self.announcement()).items() if k != "schedulers"},
            "listen": self.config.listen,
            "download_pattern": self.config.download_pattern,
            "p2p": self.config.p2p_enabled,
            "registry_urls": dict(self.config.registries),
            "cache_entries": self.store.count,
            "uptime": round(now - self.started, 3),
            "schedulers": {url: c.to_json(now) for url, c in self.contacts.items()},
        }

    async def _node(self, request: web.Request) -> web.Response:
        return web.json_response(self.node_json())
