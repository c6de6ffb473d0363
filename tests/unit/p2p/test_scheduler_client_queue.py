"""What an agent's scheduler client blames on the scheduler, and what it does not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from shoal.p2p import scheduler_client
from shoal.p2p.protocol import JoinRequest, Report
from shoal.p2p.scheduler_client import CallsQueued, SchedulerClient, SchedulerRejected, SchedulerUnavailable
from shoal.scheduler.config import SchedulerConfig
from shoal.scheduler.server import Scheduler

D = "sha256:" + "d" * 64
MiB = 1 << 20
JOIN = JoinRequest("127.0.0.1:65001", "127.0.0.1:65001", 4 * MiB, MiB)
VIEW = {"role": "fetcher", "parents": [], "size": 4 * MiB, "piece_size": MiB, "lease_ttl": 15.0}


@pytest.fixture
async def slow_schedulers() -> AsyncIterator[tuple[list[str], list[str]]]:
    """Two schedulers that answer each join after 0.4 s; the URLs of the calls that arrived."""
    arrived: list[str] = []

    def app(url: list[str]) -> web.Application:
        async def join(request: web.Request) -> web.Response:
            arrived.append(url[0])
            await asyncio.sleep(0.4)
            return web.json_response(VIEW)

        application = web.Application()
        application.router.add_post("/v1/tasks/{digest}/join", join)
        return application

    first: list[str] = []
    second: list[str] = []
    async with TestServer(app(first), host="127.0.0.1") as a, TestServer(app(second), host="127.0.0.1") as b:
        first.append(str(a.make_url("")).rstrip("/"))
        second.append(str(b.make_url("")).rstrip("/"))
        yield [first[0], second[0]], arrived


class TestCallsQueuedHere:
    async def test_a_call_that_never_left_does_not_mark_the_scheduler_down(
        self, slow_schedulers: tuple[list[str], list[str]], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Six joins at once over two slots, each answered in 0.4 s, with a 0.6 s bound: the
        fifth and sixth wait 0.8 s for a slot. They fail as queued here and are never sent:
        not to the digest's scheduler, and not to the other one (which would start a second
        task), and the digest's scheduler stays first in line."""
        monkeypatch.setattr(scheduler_client, "TOTAL_TIMEOUT", 0.6)
        urls, arrived = slow_schedulers
        async with aiohttp.ClientSession() as session:
            client = SchedulerClient(session, urls, "t0ken")
            owner = client.ranked(D)
            results = await asyncio.gather(*(client.join(D, JOIN) for _ in range(6)), return_exceptions=True)
            queued = [r for r in results if isinstance(r, BaseException)]
            assert len(queued) == 2
            assert all(isinstance(r, CallsQueued) for r in queued)
            assert arrived == [owner[0]] * 4
            assert client.ranked(D) == owner


class TestFullScheduler:
    async def test_a_full_scheduler_sends_the_blob_to_the_origin_at_once(self) -> None:
        scheduler = Scheduler(SchedulerConfig(listen="127.0.0.1:0", peer_token="t0ken", max_tasks=1))
        url = await scheduler.start()
        try:
            async with aiohttp.ClientSession() as session:
                client = SchedulerClient(session, [url], "t0ken")
                await client.join(D, JOIN)
                with pytest.raises(SchedulerRejected, match="scheduler full") as refused:
                    await client.join("sha256:" + "e" * 64, JOIN)
                assert refused.value.status == 503
                assert isinstance(refused.value, SchedulerUnavailable)
        finally:
            await scheduler.stop()


class TestLeaseHolderReports:
    async def test_a_fetchers_report_does_not_queue_behind_the_agents_other_calls(self) -> None:
        """The scheduler moves a named fetcher's lease after 5 s without a report, and a
        fetcher reports every 2 s: its report with nothing new must not wait for a slot behind
        this agent's calls to a busy scheduler (up to ``TOTAL_TIMEOUT``), silent all that
        time while it fetches. A child's report still waits."""
        held, other = "sha256:" + "a" * 64, "sha256:" + "b" * 64
        events: list[str] = []

        async def join(request: web.Request) -> web.Response:
            digest = request.match_info["digest"]
            if digest == held:
                return web.json_response(VIEW | {"fetcher": JOIN.peer_id})
            events.append("slow join")
            await asyncio.sleep(1.0)  # a busy scheduler
            events.append("slow join answered")
            return web.json_response(VIEW | {"role": "peer", "fetcher": "someone else"})

        async def report(request: web.Request) -> web.Response:
            events.append(f"report {request.match_info['digest'][7]}")
            fetcher = JOIN.peer_id if request.match_info["digest"] == held else "someone else"
            return web.json_response(VIEW | {"fetcher": fetcher})

        application = web.Application()
        application.router.add_post("/v1/tasks/{digest}/join", join)
        application.router.add_post("/v1/tasks/{digest}/report", report)
        heartbeat = Report(JOIN.peer_id, JOIN.peer_id, 1, MiB, size=4 * MiB, piece_size=MiB)
        async with TestServer(application, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
            client = SchedulerClient(session, [str(server.make_url("")).rstrip("/")], "t0ken")
            assert (await client.join(held, JOIN)).fetcher == JOIN.peer_id
            assert (await client.report(other, heartbeat)).fetcher != JOIN.peer_id
            slow = [asyncio.create_task(client.join(other, JOIN)) for _ in range(scheduler_client.CALLS_IN_FLIGHT)]
            while len(events) < 1 + scheduler_client.CALLS_IN_FLIGHT:
                await asyncio.sleep(0.01)
            await asyncio.gather(client.report(held, heartbeat), client.report(other, heartbeat), *slow)
        busy = ["slow join"] * scheduler_client.CALLS_IN_FLIGHT
        assert events[: 2 + scheduler_client.CALLS_IN_FLIGHT] == [
            "report b",
            *busy,
            "report a",
        ]  # the fetcher's, at once
        assert events[-1] == "report b"  # a child's waits for a slot
