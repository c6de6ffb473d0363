"""Choosing the nodes to preheat and summing up the results: pure functions."""

from __future__ import annotations

import pytest

from shoal.ops.preheat import NodeResult, SelectionError, apply_event, clear_text_refusal, select_nodes, summarize
from shoal.p2p.presence import AgentAnnouncement

AGENTS = [
    AgentAnnouncement(peer_id=a, address=a, node=n)
    for a, n in (("10.0.0.3:65001", "node-b"), ("10.0.0.2:65001", "node-a"), ("10.0.0.4:65001", ""))
]


class TestSelectNodes:
    """--nodes: nothing means all, a number the first N by address, a list names agents."""

    @pytest.mark.parametrize(
        ("nodes", "expected"),
        [
            (None, ["10.0.0.2:65001", "10.0.0.3:65001", "10.0.0.4:65001"]),
            ("2", ["10.0.0.2:65001", "10.0.0.3:65001"]),
            ("node-b", ["10.0.0.3:65001"]),
            ("10.0.0.4,node-a", ["10.0.0.4:65001", "10.0.0.2:65001"]),
            ("10.0.0.2:65001, node-a", ["10.0.0.2:65001"]),
        ],
    )
    def test_selection(self, nodes: str | None, expected: list[str]) -> None:
        assert [a.address for a in select_nodes(AGENTS, nodes)] == expected

    @pytest.mark.parametrize(
        ("nodes", "needle"), [("4", "know 3 agents"), ("0", "know 3"), ("node-z", "no agent node-z")]
    )
    def test_impossible_selections(self, nodes: str, needle: str) -> None:
        with pytest.raises(SelectionError, match=needle):
            select_nodes(AGENTS, nodes)


class TestSummary:
    """The summary counts nodes that hold the image and says why the others do not."""

    def test_events_and_summary(self) -> None:
        good, bad, broken = (NodeResult(a) for a in AGENTS)
        for event in (
            {"event": "manifest", "blobs": 2, "bytes": 3 << 20},
            {"event": "blob", "digest": "sha256:" + "a" * 64, "size": 1, "cached": False},
            {"event": "done", "held": True, "blobs": 2, "bytes": 3 << 20, "fetched": 2, "missing": []},
        ):
            apply_event(good, event)
        apply_event(bad, {"event": "manifest", "blobs": 2, "bytes": 3 << 20})
        apply_event(bad, {"event": "done", "held": False, "fetched": 1, "missing": ["sha256:" + "b" * 64]})
        apply_event(broken, {"event": "error", "error": "manifest team/app:v1: HTTP 401"})
        text = summarize("reg/team/app:v1", [good, bad, broken], 1.25)
        assert text.splitlines()[0] == "1/3 nodes hold reg/team/app:v1 (2 blobs, 3.0 MiB) after 1.2 s"
        assert "FAILED node-a (10.0.0.2:65001): 1 of 2 blobs missing: sha256:bbbbbbbbbbbb" in text
        assert "FAILED 10.0.0.4:65001: manifest team/app:v1: HTTP 401" in text
        assert good.done_blobs == 1
        assert good.held


class TestClearTextRefusal:
    """Secrets go to agents on other hosts only over TLS; agents on this host, or a request
    without secrets, may be reached in clear."""

    def local(self, *addresses: str) -> list[AgentAnnouncement]:
        return [AgentAnnouncement(peer_id=a, address=a) for a in addresses]

    def test_other_hosts_with_secrets(self) -> None:
        refusal = clear_text_refusal(AGENTS, ["the peer token", "the registry credentials"])
        assert refusal is not None
        assert refusal.startswith("agent 10.0.0.3:65001 and 2 more: plain HTTP would send the peer token and ")
        assert "--ca" in refusal
        assert "--insecure-agent-http" in refusal

    @pytest.mark.parametrize(
        ("addresses", "secrets"),
        [
            (("127.0.0.1:65001", "127.0.0.9:65001", "[::1]:65001", "localhost:65001"), ["the peer token"]),
            (("10.0.0.2:65001",), []),
        ],
    )
    def test_allowed_in_clear(self, addresses: tuple[str, ...], secrets: list[str]) -> None:
        assert clear_text_refusal(self.local(*addresses), secrets) is None
