"""The scheduler's HTTP API, served for real on 127.0.0.1 and driven with the agent's SchedulerClient."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shoal.demo.fleet import shoal_argv, wait_healthy
from shoal.p2p.protocol import JoinRequest, Report, Stats, from_json, to_json
from shoal.p2p.rendezvous import rank_schedulers
from shoal.p2p.scheduler_client import SchedulerClient, SchedulerRejected, SchedulerUnavailable
from shoal.scheduler.config import ConfigError, SchedulerConfig
from shoal.scheduler.server import Scheduler
from shoal.testing.procs import ManagedProcess, free_port

TOKEN = "s3cret-peer-token"
MiB = 1 << 20
D = "sha256:" + "c" * 64


def digest(i: int) -> str:
    return f"sha256:{i:064x}"


def join_req(peer: str, size: int = 4 * MiB) -> JoinRequest:
    return JoinRequest(peer, f"127.0.0.1:{1000 + len(peer)}", size, MiB)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def scheduler() -> AsyncIterator[Scheduler]:
    node = Scheduler(SchedulerConfig(listen="127.0.0.1:0", peer_token=TOKEN))
    await node.start()
    yield node
    await node.stop()


@pytest.fixture
def client(scheduler: Scheduler, session: aiohttp.ClientSession) -> SchedulerClient:
    return SchedulerClient(session, [scheduler.url], TOKEN)


class TestCalls:
    """join, report, hashes and leave round-trip through HTTP."""

    async def test_join_report_hashes(self, client: SchedulerClient, scheduler: Scheduler) -> None:
        first = await client.join(D, join_req("a"))
        assert (first.role, first.fetcher, first.size, first.piece_size) == ("fetcher", "a", 4 * MiB, MiB)
        second = await client.join(D, join_req("bb"))
        assert second.role == "peer"
        assert [(p.peer_id, p.address) for p in second.parents] == [("a", "127.0.0.1:1001")]
        view = await client.report(D, Report("a", "127.0.0.1:1001", 2, 2 * MiB, hashes={0: "0" * 64, 1: "1" * 64}))
        assert view.hashes_known == 2
        hashes = await client.hashes(D, 0)
        assert (hashes.start, hashes.hashes, hashes.total) == (0, ["0" * 64, "1" * 64], 4)
        await client.leave(D, "bb")
        assert set(scheduler.state.tasks[D].members) == {"a"}

    async def test_hashes_long_poll_wakes_on_report(self, client: SchedulerClient) -> None:
        await client.join(D, join_req("a"))
        started = time.monotonic()
        poll = asyncio.create_task(client.hashes(D, 0, wait=10))
        await asyncio.sleep(0.2)
        assert not poll.done()
        await client.report(D, Report("a", "127.0.0.1:1001", 1, MiB, hashes={0: "a" * 64}))
        view = await asyncio.wait_for(poll, 3)
        assert view.hashes == ["a" * 64]
        assert time.monotonic() - started < 3

    async def test_one_report_wakes_every_long_poll_with_its_own_start(self, client: SchedulerClient) -> None:
        """Waiting peers from one start share an answer; one from another start gets its own."""
        await client.join(D, join_req("a"))
        await client.report(D, Report("a", "127.0.0.1:1001", 1, MiB, hashes={0: "a" * 64}))
        polls = [asyncio.create_task(client.hashes(D, start, wait=10)) for start in (1, 1, 1, 2)]
        await asyncio.sleep(0.2)
        assert not any(p.done() for p in polls)
        await client.report(D, Report("a", "127.0.0.1:1001", 3, 3 * MiB, hashes={1: "b" * 64, 2: "c" * 64}))
        views = await asyncio.wait_for(asyncio.gather(*polls), 3)
        assert [(v.start, v.hashes) for v in views] == [(1, ["b" * 64, "c" * 64])] * 3 + [(2, ["c" * 64])]
        assert (await client.hashes(D, 0)).hashes == ["a" * 64, "b" * 64, "c" * 64]

    async def test_hashes_long_poll_times_out_empty(self, client: SchedulerClient) -> None:
        started = time.monotonic()
        view = await client.hashes(D, 0, wait=0.3)
        assert view.hashes == []
        assert 0.25 < time.monotonic() - started < 3

    async def test_stats_metrics_and_health(self, client: SchedulerClient, scheduler: Scheduler) -> None:
        await client.join(D, join_req("a"))
        await client.join(D, join_req("bb"))
        async with aiohttp.ClientSession() as raw:
            async with raw.get(f"{scheduler.url}/v1/stats", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                stats: Stats = from_json(Stats, await resp.json())
            assert (stats.tasks, stats.peers, stats.joins, stats.lease_changes) == (1, 2, 2, 1)
            async with raw.get(f"{scheduler.url}/metrics") as resp:
                text = await resp.text()
            async with raw.get(f"{scheduler.url}/healthz") as resp:
                assert resp.status == 200
        assert "shoal_scheduler_tasks 1.0" in text
        assert "shoal_scheduler_peers 2.0" in text
        assert "shoal_scheduler_joins_total 2.0" in text
        assert "shoal_scheduler_lease_changes_total 1.0" in text
        assert 'shoal_scheduler_parents_per_join_bucket{le="1.0"} 2.0' in text


class TestRefusals:
    """Missing token: 401. Malformed input: 400 saying why. Size mismatch: 409."""

    async def test_no_token_is_401(self, scheduler: Scheduler, session: aiohttp.ClientSession) -> None:
        async with session.post(f"{scheduler.url}/v1/tasks/{D}/join", json={}) as resp:
            assert resp.status == 401
        async with session.get(f"{scheduler.url}/v1/stats", headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401

    async def test_every_api_route_needs_the_token(self, scheduler: Scheduler, session: aiohttp.ClientSession) -> None:
        """The token check is a wrapper on each route (no middleware): a route added without it fails here."""
        routes = [r for r in scheduler.build_app().router.routes() if r.method != "HEAD"]
        api = [
            (r.method, r.resource.canonical) for r in routes if r.resource and r.resource.canonical.startswith("/v1/")
        ]
        assert len(api) == 7, api
        for method, path in api:
            url = scheduler.url + path.replace("{digest}", D)
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN}x"}):
                async with session.request(method, url, json={}, headers=headers) as resp:
                    assert resp.status == 401, (method, path, headers)
        assert scheduler.state.stats().joins == scheduler.state.stats().reports == 0

    async def test_the_client_sends_its_zone(self, scheduler: Scheduler, session: aiohttp.ClientSession) -> None:
        zoned = SchedulerClient(session, [scheduler.url], TOKEN, zone="eu-west-1b")
        await zoned.join(D, join_req("a"))
        assert scheduler.state.peers["a"].zone == "eu-west-1b"
        await zoned.report(D, Report("b", "127.0.0.1:1002", 0, 0, size=4 * MiB, piece_size=MiB))
        assert scheduler.state.peers["b"].zone == "eu-west-1b"

    async def test_wrong_token_through_client(self, scheduler: Scheduler, session: aiohttp.ClientSession) -> None:
        bad = SchedulerClient(session, [scheduler.url], "wrong")
        with pytest.raises(SchedulerRejected) as info:
            await bad.join(D, join_req("a"))
        assert info.value.status == 401
        assert scheduler.state.stats().joins == 0

    @pytest.mark.parametrize(
        ("path", "body", "message"),
        [
            (f"/v1/tasks/sha256:{'c' * 10}/join", "{}", "invalid digest"),
            (f"/v1/tasks/{D}/join", "not json", "want JSON"),
            (f"/v1/tasks/{D}/join", '{"peer_id": "a"}', "missing"),
            (
                f"/v1/tasks/{D}/join",
                '{"peer_id": "a", "address": "h:1", "size": 1, "piece_size": 1, "x": 1}',
                "unknown",
            ),
            (f"/v1/tasks/{D}/join", '{"peer_id": "a", "address": "h:1", "size": "big", "piece_size": 1}', "size"),
            (f"/v1/tasks/{D}/join", '{"peer_id": "a", "address": "nohost", "size": 1, "piece_size": 1}', "address"),
            (
                f"/v1/tasks/{D}/report",
                '{"peer_id": "a", "address": "h:1", "pieces": 0, "contiguous": 0}',
                "unknown task",
            ),
            (
                f"/v1/tasks/{D}/report",
                '{"peer_id": "a", "address": "h:1", "pieces": 0, "contiguous": 0, "hashes": []}',
                "hashes",
            ),
            (f"/v1/tasks/{D}/leave", "[]", "peer_id"),
        ],
    )
    async def test_garbage_is_400(
        self, scheduler: Scheduler, session: aiohttp.ClientSession, path: str, body: str, message: str
    ) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        async with session.post(f"{scheduler.url}{path}", data=body, headers=headers) as resp:
            text = await resp.text()
            assert resp.status in (400, 404), text
            assert message in text

    async def test_bad_hashes_query_is_400(self, scheduler: Scheduler, session: aiohttp.ClientSession) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with session.get(f"{scheduler.url}/v1/tasks/{D}/hashes?from=x", headers=headers) as resp:
            assert resp.status == 400

    async def test_size_conflict_is_409(self, client: SchedulerClient) -> None:
        await client.join(D, join_req("a"))
        with pytest.raises(SchedulerRejected) as info:
            await client.join(D, join_req("bb", size=5 * MiB))
        assert info.value.status == 409


class TestFailover:
    """A client moves to the next scheduler in its rendezvous order when one is gone."""

    async def test_moves_to_the_next_and_fails_when_none_left(self, session: aiohttp.ClientSession) -> None:
        nodes = [Scheduler(SchedulerConfig(listen="127.0.0.1:0", peer_token=TOKEN)) for _ in range(2)]
        urls = [await node.start() for node in nodes]
        try:
            by_url = dict(zip(urls, nodes, strict=True))
            client = SchedulerClient(session, urls, TOKEN)
            blob = next(digest(i) for i in range(100) if rank_schedulers(digest(i), urls)[0] == urls[0])
            await client.join(blob, join_req("a"))
            assert blob in by_url[urls[0]].state.tasks
            await by_url[urls[0]].stop()
            view = await client.report(blob, Report("a", "127.0.0.1:1001", 1, MiB, size=4 * MiB, piece_size=MiB))
            assert view.role == "fetcher"  # the survivor rebuilt the task from the report
            assert blob in by_url[urls[1]].state.tasks
            await by_url[urls[1]].stop()
            with pytest.raises(SchedulerUnavailable):
                await client.join(blob, join_req("a"))
        finally:
            for node in nodes:
                await node.stop()

    async def test_failed_scheduler_is_tried_last_for_a_while(self, session: aiohttp.ClientSession) -> None:
        now = [0.0]
        client = SchedulerClient(session, ["http://127.0.0.1:1", "http://127.0.0.1:2"], None, clock=lambda: now[0])
        blob = next(digest(i) for i in range(100) if client.ranked(digest(i))[0] == "http://127.0.0.1:1")
        with pytest.raises(SchedulerUnavailable):
            await client.join(blob, join_req("a"))
        now[0] = 1.0
        assert client.ranked(blob)[0] == "http://127.0.0.1:1"  # both failed: rendezvous order again
        client._down_until.pop("http://127.0.0.1:2")
        assert client.ranked(blob) == ["http://127.0.0.1:2", "http://127.0.0.1:1"]
        now[0] = 100.0
        assert client.ranked(blob)[0] == "http://127.0.0.1:1"


def post(session: aiohttp.ClientSession, url: str, body: str | bytes, token: str | None = TOKEN) -> Any:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    return session.post(url, data=body, headers=headers)


class TestAbsurdValues:
    """Defect 7 of issue 9: absurd numbers are a 400 saying why, never a 500 nor a big allocation."""

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            ('{"peer_id": "a", "address": "h:1", "size": 50000000, "piece_size": 1}', "pieces of 1048576"),
            ('{"peer_id": "a", "address": "h:1", "size": 1e20, "piece_size": 1048576}', "integer"),
            ('{"peer_id": "a", "address": "h:1", "size": 100000000000000000000, "piece_size": 16777216}', "size"),
            ('{"peer_id": "a", "address": "h:1", "size": 1099511627777, "piece_size": 16777216}', "size"),
            ('{"peer_id": "a", "address": "h:1", "size": -1, "piece_size": 1048576}', "size"),
            ('{"peer_id": "a", "address": "h:1", "size": true, "piece_size": 1048576}', "integer"),
            ('{"peer_id": "a", "address": "h:1", "size": 1' + "0" * 5000 + ', "piece_size": 1}', "want JSON"),
            # no float holds 1e400: the JSON reader refuses it (and 1e20, an integer past 64 bits, is a float)
            ('{"peer_id": "a", "address": "h:1", "size": 1, "piece_size": 1048576, "pieces": 1e400}', "want JSON"),
            ("[" * 100_000 + "]" * 100_000, "want JSON"),
            ('{"peer_id": "a", "address": "h:1", "size": 4194304, "piece_size": 1048576, "pieces": 5}', "pieces 5"),
        ],
    )
    async def test_join(self, scheduler: Scheduler, session: aiohttp.ClientSession, body: str, message: str) -> None:
        async with post(session, f"{scheduler.url}/v1/tasks/{D}/join", body) as resp:
            text = await resp.text()
            assert resp.status == 400, text
            assert message in text
        assert scheduler.state.tasks == {}

    async def test_report_and_query(self, scheduler: Scheduler, client: SchedulerClient,
                                    session: aiohttp.ClientSession) -> None:  # fmt: skip
        await client.join(D, join_req("a"))
        url = f"{scheduler.url}/v1/tasks/{D}"
        bodies: list[str | bytes] = [
            '{"peer_id": "a", "address": "h:1", "pieces": 0, "contiguous": 0, "hashes": {"4": "' + "0" * 64 + '"}}',
            '{"peer_id": "a", "address": "h:1", "pieces": 0, "contiguous": 0, "hashes": {"1e3": "x"}}',
            '{"peer_id": "a", "address": "h:1", "pieces": 0, "contiguous": 99999999}',
            '{"peer_id": "a", "address": "h:1", "pieces": 0, "contiguous": 0, "failed_parents": '
            + json.dumps(["p"] * 2000)
            + "}",
            b'{"peer_id": "\xff"}',
        ]
        for body in bodies:
            async with post(session, f"{url}/report", body) as resp:
                assert resp.status == 400, (body[:80], await resp.text())
        for query in ("from=99999999999999999999", "wait=nan", "wait=1e999", "from=%D9%A1"):
            async with session.get(f"{url}/hashes?{query}", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                assert resp.status == 400, query


class TestHashAuthority:
    """Defect 6 of issue 9: over HTTP, only the lease holder's hashes count."""

    async def test_a_liar_first_cannot_publish_and_a_seed_recovers_through_the_lease(
        self, scheduler: Scheduler, client: SchedulerClient
    ) -> None:
        garbage = {i: f"{i + 100:064x}" for i in range(4)}
        truth = {i: f"{i:064x}" for i in range(4)}
        lie = Report("liar", "127.0.0.1:2000", 4, 4 * MiB, complete=True, hashes=garbage, size=4 * MiB, piece_size=MiB)
        view = await client.report(D, lie)
        assert view.hashes_known == 0
        assert (await client.hashes(D, 0)).hashes == []
        # the honest path after a restart: a seed announces, is made holder, then publishes
        seed = Report("seed", "127.0.0.1:2001", 4, 4 * MiB, complete=True, size=4 * MiB, piece_size=MiB)
        scheduler.state.leave(D, "liar")
        view = await client.report(D, seed)
        assert (view.role, view.fetcher) == ("fetcher", "seed")
        view = await client.report(D, replace(seed, hashes=truth))
        assert (view.hashes_known, view.fetcher) == (4, None)
        assert (await client.hashes(D, 0)).hashes == [truth[i] for i in range(4)]
        # and once known, nobody (holder or not) changes them
        await client.report(D, replace(lie, hashes={0: "f" * 64}))
        assert (await client.hashes(D, 0)).hashes[0] == truth[0]


class TestPeerAuth:
    """Defect 2 of issue 9 (scheduler side): no token, no service, unless the lab opt-out says so."""

    def test_server_refuses_a_config_without_token(self) -> None:
        with pytest.raises(ConfigError, match="--insecure-no-peer-auth"):
            Scheduler(SchedulerConfig(listen="127.0.0.1:0"))
        with pytest.raises(ConfigError, match="choose one"):
            SchedulerConfig(peer_token="x", insecure_no_peer_auth=True)

    def test_command_refuses_to_start_without_token(self, tmp_path: Path) -> None:
        token = tmp_path / "token"
        token.write_text("t0ken\n")
        for extra in ([], ["--peer-token-file", str(token), "--insecure-no-peer-auth"]):
            done = subprocess.run(
                shoal_argv("scheduler", "--listen", f"127.0.0.1:{free_port()}", *extra),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 2, done.stderr
            assert "--peer-token-file" in done.stderr or "choose one" in done.stderr

    def test_opt_out_starts_warns_and_serves_without_token(self, tmp_path: Path) -> None:
        port = free_port()
        log = tmp_path / "scheduler.log"
        proc = ManagedProcess(
            shoal_argv("scheduler", "--listen", f"127.0.0.1:{port}", "--insecure-no-peer-auth"), stdout=log
        )
        try:
            wait_healthy(f"http://127.0.0.1:{port}", proc)
            body = json.dumps(to_json(join_req("a"))).encode()
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/tasks/{D}/join", data=body, method="POST")
            with urllib.request.urlopen(request, timeout=5) as resp:
                assert json.load(resp)["role"] == "fetcher"
        finally:
            proc.stop()
        warnings = [line for line in log.read_text().splitlines() if " WARNING " in line]
        assert any("INSECURE" in line and "--insecure-no-peer-auth" in line for line in warnings), warnings

    async def test_default_server_answers_401_without_the_bearer_token(
        self, scheduler: Scheduler, session: aiohttp.ClientSession
    ) -> None:
        body = json.dumps(to_json(join_req("a")))
        for token in (None, "wrong", ""):
            for path in (f"/v1/tasks/{D}/join", f"/v1/tasks/{D}/report", f"/v1/tasks/{D}/leave"):
                async with post(session, f"{scheduler.url}{path}", body, token) as resp:
                    assert resp.status == 401, (path, token)
        async with session.get(f"{scheduler.url}/v1/tasks/{D}/hashes") as resp:
            assert resp.status == 401
        assert scheduler.state.stats().joins == 0
