"""A registry that refuses or hangs: bounded, marked down, and a clean OCI error for the client."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import aiohttp
import pytest

from shoal.agent.outage import RegistryBreaker
from shoal.agent.upstreams import map_upstream_error
from shoal.oci.auth import TokenCache
from shoal.oci.client import RegistryClient, UpstreamUnavailable
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


async def _open(client: RegistryClient) -> UpstreamUnavailable:
    with pytest.raises(UpstreamUnavailable) as caught:
        await client.open("GET", "/v2/team/app/manifests/v1", repository="team/app", creds=None)
    return caught.value


class TestUnreachableRegistry:
    """Refused: fast and named; hung: one bounded wait, then refused at once while down."""

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

    async def test_hung_costs_one_bounded_wait(self, hung_port: int) -> None:
        breaker = RegistryBreaker("registry.test", 30.0)
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
            first = await _open(client)
            waited = time.monotonic() - started
            started = time.monotonic()
            second = await _open(client)
            again = time.monotonic() - started
        assert 0.4 < waited < 2.0
        assert first.cause == "no answer within 0.5s"
        assert again < 0.05  # marked down: no second wait
        assert "marked down" in second.cause
        assert "no answer within 0.5s" in second.cause
        assert breaker.hung
