"""HTB command generation and rate parsing (no kernel needed)."""

from __future__ import annotations

import pytest
from bench.fleet.netns import plan_lab, slow_nodes
from bench.fleet.shaping import format_rate, htb_commands, parse_rate


class TestParseRate:
    """Rates read the way ``tc`` reads them: decimal units, bits."""

    @pytest.mark.parametrize(
        ("text", "bps"),
        [
            ("200mbit", 200_000_000),
            ("1gbit", 10**9),
            ("500kbit", 500_000),
            ("50M", 50 * 10**6),
            ("1.5gbit", 1_500_000_000),
            ("1000", 1000),
        ],
    )
    def test_parses(self, text: str, bps: int) -> None:
        assert parse_rate(text) == bps

    @pytest.mark.parametrize("text", ["", "fast", "-1mbit", "0mbit", "10 MB/s"])
    def test_rejects(self, text: str) -> None:
        with pytest.raises(ValueError, match="rate"):
            parse_rate(text)

    def test_format(self) -> None:
        assert format_rate(200_000_000) == "200 Mbit/s"


class TestHtbCommands:
    """One root class at the cap, one leaf and one u32 filter per peer."""

    def test_per_peer_classes(self) -> None:
        lines = htb_commands("eth0", 200_000_000, ["10.77.0.1", "10.77.1.2"], match="dst")
        assert lines[0].startswith("qdisc replace dev eth0 root handle 1: htb default ffff")
        filters = [x for x in lines if x.startswith("filter") and "protocol ip " in x]
        assert len(filters) == 2
        assert "match ip dst 10.77.0.1/32 flowid 1:10" in filters[0]
        assert "match ip dst 10.77.1.2/32 flowid 1:11" in filters[1]
        leaves = [x for x in lines if "classid 1:1" in x and "parent 1:1 " in x]
        assert all("ceil 200000000bit" in x and "rate 100000000bit" in x for x in leaves)

    def test_arp_has_its_own_guaranteed_class(self) -> None:
        lines = htb_commands("eth0", 50_000_000, ["10.77.1.2"], match="src")
        (arp,) = [x for x in lines if "protocol arp" in x]
        assert "flowid 1:fffe" in arp
        (cls,) = [x for x in lines if "classid 1:fffe" in x]
        assert "rate 500000bit" in cls
        assert "prio 0" in cls

    def test_match_side(self) -> None:
        with pytest.raises(ValueError, match="match"):
            htb_commands("eth0", 1000, ["10.0.0.1"], match="both")


class TestPlan:
    """Names fit Linux limits, addresses are unique, the heterogeneous quarter is slow."""

    def test_names_and_addresses(self) -> None:
        plan = plan_lab(300, node_bps=200, origin_bps=100, run_id="ab12")
        assert plan.bridge == "shoalbrab12"
        assert all(len(h.veth) <= 15 for h in plan.hosts)
        assert len({h.ip for h in plan.hosts}) == len(plan.hosts)
        assert plan.origin.upload_bps == 100
        assert plan.nodes[251].ip == "10.77.2.2"

    def test_heterogeneous(self) -> None:
        plan = plan_lab(20, node_bps=200, origin_bps=200, heterogeneous=True, run_id="0000")
        slow = [h for h in plan.nodes if h.upload_bps == 50]
        assert len(slow) == 5 == len(slow_nodes(20))
        assert all(h.download_bps == 50 for h in slow)


class TestNeighbourTable:
    """The kernel's one ARP table must hold a full mesh of every namespace (40 nodes: the
    default hard limit of 1024 entries overflowed and connections between nodes failed)."""

    def test_room_for_a_full_mesh(self) -> None:
        from bench.fleet.netns import neighbour_thresholds

        assert neighbour_thresholds(6) == (128, 512, 1024)
        low, mid, high = neighbour_thresholds(42)
        assert high >= 2 * 42 * 42
        assert low < mid < high
