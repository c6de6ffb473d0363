"""A registry that refuses or hangs: bounded, marked down, and a clean OCI error for the client."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from aiohttp import web

from shoal.agent.outage import RegistryBreaker
from shoal.agent.upstreams import map_upstream_error
from shoal.oci.auth import TokenCache
from shoal.oci.client import Fallback, RegistryClient, UpstreamUnavailable
from shoal.oci.distribution import DistributionPath, PathKind


@pytest.fixture
def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: connecting is refused


@pytest.fixture
def hung_port() -> Iterator[int]:
    """Accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield int(s.getsockname()[1])


def _dist() -> DistributionPath:
    return DistributionPath(PathKind.MANIFEST, "registry.test", "team/app", "v1")


async def _open(client: RegistryClient, fallback: Fallback | None = None) -> UpstreamUnavailable:
    with pytest.raises(UpstreamUnavailable) as caught:
        await client.open("GET", "/v2/team/app/manifests/v1", repository="team/app", creds=None, fallback=fallback)
    return caught.value


class TestUnreachableRegistry:
    """Refused: fast and named; hung: one bounded wait when something is held, then none while
    down; the long bound when nothing is."""

    async def test_refused_is_fast_and_the_body_is_clean_json(self, refused_port: int) -> None:
        breaker = RegistryBreaker("registry.test", 2.0)
        async with aiohttp.ClientSession() as session:
            client = RegistryClient(
                "registry.test", f"http://127.0.0.1:{refused_port}", session, TokenCache(), breaker=breaker
            )
            started = time.monotonic()
            exc = await _open(client)
            assert time.monotonic() - started < 0.5
        assert exc.cause == "connection refused"
        assert breaker.down
        error = map_upstream_error(exc, _dist())
        assert error.status == 502
        body = json.loads(error.body())
        entry = body["errors"][0]
        assert entry["code"] == "UPSTREAM_UNAVAILABLE"
        assert "registry.test" in entry["message"]
        assert "connection refused" in entry["message"]
        assert "Error(" not in entry["message"]
        assert "ConnectionKey" not in entry["message"]

    async def test_hung_costs_one_bounded_wait_when_something_is_held(self, hung_port: int) -> None:
        breaker = RegistryBreaker("registry.test", 30.0)
        asked: list[bool] = []

        async def held() -> bool:
            asked.append(True)
            return True

        async with aiohttp.ClientSession() as session:
            client = RegistryClient(
                "registry.test",
                f"http://127.0.0.1:{hung_port}",
                session,
                TokenCache(),
                header_timeout=0.5,
                breaker=breaker,
            )
            started = time.monotonic()
            first = await _open(client, held)
            waited = time.monotonic() - started
            started = time.monotonic()
            second = await _open(client, held)
            again = time.monotonic() - started
        assert 0.4 < waited < 2.0
        assert first.cause == "no answer within 0.5s"
        assert again < 0.05  # marked down: no second wait
        assert "marked down" in second.cause
        assert "no answer within 0.5s" in second.cause
        assert breaker.hung
        assert len(asked) == 2

    async def test_hung_with_nothing_held_waits_the_long_bound(self, hung_port: int) -> None:
        breaker = RegistryBreaker("registry.test", 30.0)
        async with aiohttp.ClientSession() as session:
            client = RegistryClient(
                "registry.test",
                f"http://127.0.0.1:{hung_port}",
                session,
                TokenCache(),
                header_timeout=0.3,
                answer_timeout=1.2,
                breaker=breaker,
            )
            started = time.monotonic()
            exc = await _open(client, _nothing_held)
            waited = time.monotonic() - started
        assert 1.1 < waited < 3.0
        assert exc.cause == "no answer within 1.2s"
        assert breaker.hung


async def _nothing_held() -> bool:
    return False


@pytest.fixture
async def slow_registry() -> AsyncIterator[tuple[str, list[float]]]:
    """Answers every request, after SLOW seconds; lists when each request arrived."""
    arrivals: list[float] = []

    async def answer(request: web.Request) -> web.Response:
        arrivals.append(time.monotonic())
        await asyncio.sleep(SLOW)
        return web.Response(body=b"{}", headers={"Docker-Content-Digest": "sha256:" + "0" * 64})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", arrivals
    finally:
        await runner.cleanup()


SLOW = 1.0


class TestSlowRegistry:
    """A registry slower than the short bound still serves what nothing held can stand in for."""

    @pytest.mark.parametrize("marked_hung", [False, True])
    async def test_its_answer_is_passed_on(self, slow_registry: tuple[str, list[float]], marked_hung: bool) -> None:
        url, arrivals = slow_registry
        breaker = RegistryBreaker("registry.test", 30.0)
        if marked_hung:
            breaker.failed("no answer within 0.3s", hung=True)
        async with aiohttp.ClientSession() as session:
            client = RegistryClient(
                "registry.test", url, session, TokenCache(), header_timeout=0.3, answer_timeout=10.0, breaker=breaker
            )
            started = time.monotonic()
            resp = await client.open(
                "GET", "/v2/team/app/manifests/v1", repository="team/app", creds=None, fallback=_nothing_held
            )
            took = time.monotonic() - started
            resp.release()
        assert resp.status == 200
        assert SLOW <= took < SLOW + 1.0
        assert len(arrivals) == 1  # one request, waited for: not a second one
        assert not breaker.down  # its answer ends a marked outage at once

    async def test_held_content_stops_the_wait(self, slow_registry: tuple[str, list[float]]) -> None:
        url, _ = slow_registry
        breaker = RegistryBreaker("registry.test", 30.0)

        async def held() -> bool:
            return True

        async with aiohttp.ClientSession() as session:
            client = RegistryClient(
                "registry.test", url, session, TokenCache(), header_timeout=0.3, answer_timeout=10.0, breaker=breaker
            )
            started = time.monotonic()
            exc = await _open(client, held)
            took = time.monotonic() - started
        assert 0.25 < took < SLOW
        assert exc.cause == "no answer within 0.3s"
        assert breaker.hung
