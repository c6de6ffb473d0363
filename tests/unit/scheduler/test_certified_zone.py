"""A caller's zone comes from its certificate when it has one: the scheduler read it from the
caller's Node, so a node cannot claim another zone (and become that zone's gateway)."""

from __future__ import annotations

import json

from shoal.p2p.tls import PeerIdentity
from shoal.scheduler.config import SchedulerConfig
from shoal.scheduler.kube import node_facts
from shoal.scheduler.server import Scheduler

DIGEST = "sha256:" + "a" * 64
MiB = 1 << 20


def join(peer: str, zone: str = "") -> bytes:
    body: dict[str, object] = {"peer_id": peer, "address": peer, "size": 4 * MiB, "piece_size": MiB}
    if zone:
        body["zone"] = zone
    return json.dumps(body).encode()


def report(peer: str, zone: str) -> bytes:
    body = {"peer_id": peer, "address": peer, "pieces": 0, "contiguous": 0, "zone": zone}
    return json.dumps(body).encode()


def identity(ip: str, zone: str) -> PeerIdentity:
    return PeerIdentity(name=f"node-{ip}", dns_names=(), ips=(ip,), zone=zone)


def scheduler() -> Scheduler:
    return Scheduler(SchedulerConfig(listen="127.0.0.1:0", peer_token="t"))


class TestCertifiedZone:
    def test_the_certificates_zone_outranks_the_announced_one(self) -> None:
        s = scheduler()
        s.answer_join(DIGEST, join("10.0.0.1:65001", zone="zone-b"), identity("10.0.0.1", "zone-a"))
        assert s.state.peers["10.0.0.1:65001"].zone == "zone-a"
        s.answer_report(DIGEST, report("10.0.0.1:65001", "zone-c"), identity("10.0.0.1", "zone-a"))
        assert s.state.peers["10.0.0.1:65001"].zone == "zone-a"

    def test_an_agent_without_a_zone_flag_gets_its_certificates(self) -> None:
        s = scheduler()
        s.answer_join(DIGEST, join("10.0.0.2:65001"), identity("10.0.0.2", "zone-a"))
        assert s.state.peers["10.0.0.2:65001"].zone == "zone-a"

    def test_a_certificate_without_a_zone_claims_none(self) -> None:
        """An unlabelled Node's (or an older) certificate: in every zone, never a zone's gateway."""
        s = scheduler()
        s.answer_join(DIGEST, join("10.0.0.3:65001", zone="zone-b"), identity("10.0.0.3", ""))
        assert s.state.peers["10.0.0.3:65001"].zone == ""

    def test_without_a_certificate_the_announced_zone_stands(self) -> None:
        s = scheduler()
        s.answer_join(DIGEST, join("10.0.0.4:65001", zone="zone-c"))
        assert s.state.peers["10.0.0.4:65001"].zone == "zone-c"


class TestNodeFacts:
    def test_the_zone_label(self) -> None:
        node = {
            "metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "eu-1a"}},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]},
        }
        facts = node_facts(node)
        assert (facts.name, facts.internal_ips, facts.zone) == ("n1", ("10.0.0.1",), "eu-1a")

    def test_no_label_or_a_bad_one_is_no_zone(self) -> None:
        assert node_facts({"metadata": {"name": "n1"}}).zone == ""
        bad = {"metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "a b"}}}
        assert node_facts(bad).zone == ""
