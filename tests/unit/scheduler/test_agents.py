"""The scheduler's agent directory: soft state kept alive by announcements."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from shoal.p2p.presence import AgentAnnouncement, agents_from_json, announcement_from_json, plain_hostport
from shoal.scheduler.agents import AgentDirectory, foreign_announcement
from shoal.scheduler.requests import BadRequest, parse_join


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def agent(address: str, **kw: object) -> AgentAnnouncement:
    return AgentAnnouncement(peer_id=address, address=address, **kw)  # type: ignore[arg-type]


class TestAgentDirectory:
    """Agents stay listed while they announce and drop out one TTL after they stop."""

    def test_listed_by_address_until_the_ttl(self) -> None:
        clock = Clock()
        directory = AgentDirectory(ttl=30, clock=clock)
        directory.announce(agent("10.0.0.9:65001"))
        clock.now += 20
        directory.announce(agent("10.0.0.2:65001"))
        assert [v.announcement.address for v in directory.live()] == ["10.0.0.2:65001", "10.0.0.9:65001"]
        assert [v.age for v in directory.live()] == [0.0, 20.0]
        clock.now += 15  # the first is 35 s old now
        assert [v.announcement.address for v in directory.live()] == ["10.0.0.2:65001"]

    def test_a_new_announcement_replaces_the_old_one(self) -> None:
        clock = Clock()
        directory = AgentDirectory(clock=clock)
        directory.announce(agent("10.0.0.2:65001", cache_bytes=1))
        clock.now += 5
        directory.announce(agent("10.0.0.2:65001", cache_bytes=7))
        (view,) = directory.live()
        assert view.announcement.cache_bytes == 7
        assert view.age == 0.0


class TestRoutes:
    """POST and GET /v1/agents round-trip an announcement; bad bodies are refused."""

    async def test_post_then_get(self) -> None:
        directory = AgentDirectory()
        app = web.Application()
        directory.add_routes(app)
        async with TestClient(TestServer(app)) as client:
            body = {
                "peer_id": "127.0.0.2:65001",
                "address": "127.0.0.2:65001",
                "node": "n1",
                "schedulers": ["http://s"],
            }
            assert (await client.post("/v1/agents", json=body)).status == 200
            assert (await client.post("/v1/agents", json={"peer_id": "x"})).status == 400
            assert (await client.post("/v1/agents", json={**body, "bogus": 1})).status == 400
            listed = agents_from_json(await (await client.get("/v1/agents")).json())
        assert [(v.announcement.node, v.announcement.schedulers) for v in listed] == [("n1", ["http://s"])]


class TestAnnouncedAddress:
    """Review finding: announcements were self-asserted, and preheat sends registry credentials
    to every listed address; an agent may announce only the address it connects from."""

    @pytest.mark.parametrize(
        ("address", "source", "allowed"),
        [
            ("10.0.0.2:65001", "10.0.0.2", True),
            ("10.0.0.2:65001", "10.0.0.9", False),
            ("[fd00::2]:65001", "fd00::2", True),
            ("127.0.0.5:65001", "127.0.0.1", True),  # one machine
            ("10.0.0.2:65001", "127.0.0.1", False),
            ("node-a:65001", "10.0.0.2", False),
            ("10.0.0.2:65001", None, False),
        ],
    )
    def test_table(self, address: str, source: str | None, allowed: bool) -> None:
        assert (foreign_announcement(address, source) is None) is allowed

    async def test_someone_elses_address_is_refused(self) -> None:
        directory = AgentDirectory()
        app = web.Application()
        directory.add_routes(app)
        async with TestClient(TestServer(app)) as client:
            body = {"peer_id": "p", "address": "10.9.9.9:18999", "node": "worker-7", "schedulers": []}
            assert (await client.post("/v1/agents", json=body)).status == 403
        assert directory.live() == []


class TestPlainAddress:
    """Issue 16 defect 6: ``10.0.0.5:1@otherhost`` passed as 10.0.0.5 and ``shoal status`` then
    sent its requests to ``otherhost``; an announced address is a plain HOST:PORT or refused."""

    @pytest.mark.parametrize(
        "address",
        [
            "127.0.0.5:1@otherhost",
            "127.0.0.5:1@otherhost:80",
            "10.0.0.5:1@otherhost",
            "127.0.0.5:65001/path",
            "user@127.0.0.5:65001",
            "127.0.0.5:65001#x",
            "127.0.0.5:0",
            "127.0.0.5:99999",
            "[fd00::2:65001",
            "10.0.0.5",
            "",
        ],
    )
    def test_refused(self, address: str) -> None:
        with pytest.raises(ValueError, match="address"):
            plain_hostport(address)
        with pytest.raises(ValueError, match="address"):
            announcement_from_json({"peer_id": "p", "address": address})

    @pytest.mark.parametrize(
        ("address", "host", "port"),
        [
            ("10.0.0.5:65001", "10.0.0.5", 65001),
            ("[fd00::2]:65001", "fd00::2", 65001),
            ("node-a.example.com:1", "node-a.example.com", 1),
        ],
    )
    def test_accepted(self, address: str, host: str, port: int) -> None:
        assert plain_hostport(address) == (host, port)

    async def test_the_scheduler_refuses_it(self) -> None:
        directory = AgentDirectory()
        app = web.Application()
        directory.add_routes(app)
        async with TestClient(TestServer(app)) as client:
            body = {"peer_id": "p", "address": "127.0.0.5:1@otherhost", "schedulers": []}
            assert (await client.post("/v1/agents", json=body)).status == 400
        assert directory.live() == []

    def test_a_listing_drops_what_a_scheduler_should_have_refused(self) -> None:
        listed = agents_from_json(
            {
                "agents": [
                    {"peer_id": "a", "address": "127.0.0.5:1@otherhost"},
                    {"peer_id": "b", "address": "10.0.0.2:1"},
                ]
            }
        )
        assert [v.announcement.address for v in listed] == ["10.0.0.2:1"]

    def test_a_join_with_it_is_a_bad_request(self) -> None:
        body = {"peer_id": "a", "address": "10.0.0.5:1@otherhost", "size": 1, "piece_size": 1}
        with pytest.raises(BadRequest, match="address"):
            parse_join(body)
