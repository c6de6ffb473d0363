"""The startup taint comes off, other taints stay; against the fake API server with the real client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from shoal.nodeconfig.ready import remove_taint
from shoal.nodeconfig.taint import without_taint
from shoal.testing.fake_apiserver import FakeApiServer

KEY = "shoal.io/agent-not-ready"
MINE = {"key": KEY, "effect": "NoSchedule"}
OTHER = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}


def node(*taints: dict[str, str]) -> dict[str, Any]:
    spec: dict[str, Any] = {"podCIDR": "10.0.1.0/24"}
    if taints:
        spec["taints"] = list(taints)
    return {"metadata": {"name": "node-1", "labels": {"zone": "a"}}, "spec": spec}


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (node(MINE, OTHER), node(OTHER)),
        (node(MINE), node()),
        (node(OTHER), None),
        (node(), None),
        (node(MINE, {"key": KEY, "effect": "NoExecute"}), node()),
    ],
)
def test_without_taint(before: dict[str, Any], after: dict[str, Any] | None) -> None:
    assert without_taint(before, KEY) == after


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    yield server
    server.close()


def core(apiserver: FakeApiServer) -> client.CoreV1Api:
    configuration = client.Configuration()
    configuration.host = apiserver.url
    return client.CoreV1Api(client.ApiClient(configuration))


class ConcurrentWriter:
    """The real client, while another controller changes the node right after our first read."""

    def __init__(self, api: client.CoreV1Api, apiserver: FakeApiServer) -> None:
        self.api = api
        self.api_client = api.api_client
        self.apiserver = apiserver
        self.reads = 0

    def replace_node(self, name: str, body: Any) -> Any:
        return self.api.replace_node(name, body)

    def read_node(self, name: str) -> Any:
        found = self.api.read_node(name)
        self.reads += 1
        if self.reads == 1:
            current = self.apiserver.get_node(name)
            assert current is not None
            current["metadata"]["labels"]["touched"] = "yes"
            self.apiserver.put_node(current)
        return found


class TestRemoveTaint:
    """Read, then replace at that resourceVersion; a conflict is retried from a fresh read."""

    def test_removes_only_its_taint(self, apiserver: FakeApiServer) -> None:
        apiserver.put_node(node(MINE, OTHER))
        assert remove_taint(core(apiserver), "node-1", KEY)
        stored = apiserver.get_node("node-1")
        assert stored is not None
        assert stored["spec"]["taints"] == [OTHER]
        assert stored["spec"]["podCIDR"] == "10.0.1.0/24"
        assert not remove_taint(core(apiserver), "node-1", KEY)  # nothing left to do

    def test_conflict_is_retried(self, apiserver: FakeApiServer) -> None:
        apiserver.put_node(node(MINE))
        api = ConcurrentWriter(core(apiserver), apiserver)
        assert remove_taint(api, "node-1", KEY, retry_delay=0.0)
        stored = apiserver.get_node("node-1")
        assert stored is not None
        assert "taints" not in stored["spec"]
        assert stored["metadata"]["labels"]["touched"] == "yes"  # the other writer's change kept
        assert api.reads == 2
        assert [m for m, p in apiserver.requests if p == "/api/v1/nodes/node-1"] == ["GET", "PUT", "GET", "PUT"]
