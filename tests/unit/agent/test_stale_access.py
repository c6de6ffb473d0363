"""What may be served while the registry is down: confirmed credentials, this repository only."""

from __future__ import annotations

import json
from pathlib import Path

from shoal.agent.metrics import AgentMetrics
from shoal.agent.outage import RegistryBreaker, begin_request
from shoal.agent.stale_access import StaleAccess, accepted_types, manifest_children
from shoal.oci.auth import Credentials
from shoal.store.outage_ledger import Fingerprints, OutageLedger

ALICE = Credentials("alice", "s3cret")
MALLORY = Credentials("alice", "guess")
HOUR = 3600.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _access(tmp_path: Path, clock: FakeClock, grace: float = HOUR) -> StaleAccess:
    breakers = {"reg": RegistryBreaker("reg", 2.0)}
    return StaleAccess(
        OutageLedger(tmp_path), Fingerprints(b"node", b"cluster"), grace, breakers, AgentMetrics(), clock
    )


class TestStaleAccess:
    """The registry's yes for a repository, within the grace, for digests of that repository."""

    def test_confirmed_repository_within_grace(self, tmp_path: Path) -> None:
        clock = FakeClock()
        access = _access(tmp_path, clock)
        manifest = json.dumps(
            {"config": {"digest": "sha256:c"}, "layers": [{"digest": "sha256:l1"}, {"digest": "sha256:l2"}]}
        ).encode()
        access.confirmed(ALICE, "reg", "team/app", ["sha256:m"])
        access.manifest("reg", "team/app", manifest)
        access.confirmed(None, "reg", "pub/tool", ["sha256:p"])
        for digest in ("sha256:m", "sha256:c", "sha256:l2"):
            assert access.may_serve(ALICE, "reg", "team/app", digest)
        assert not access.may_serve(MALLORY, "reg", "team/app", "sha256:l1")  # wrong password
        assert not access.may_serve(None, "reg", "team/app", "sha256:l1")  # anonymous
        assert not access.may_serve(ALICE, "reg", "team/app", "sha256:p")  # not this repository's
        assert access.may_serve(None, "reg", "pub/tool", "sha256:p")
        assert not access.may_serve(None, "reg", "pub/tool", "sha256:l1")  # a yes for pub/tool is not for team/app
        clock.now += HOUR + 1
        assert not access.may_serve(ALICE, "reg", "team/app", "sha256:m")

    def test_grace_zero_is_off(self, tmp_path: Path) -> None:
        access = _access(tmp_path, FakeClock(), grace=0.0)
        access.confirmed(ALICE, "reg", "team/app", ["sha256:m"])
        assert not access.may_serve(ALICE, "reg", "team/app", "sha256:m")

    def test_evidence_for_peers_is_by_cluster_fingerprint(self, tmp_path: Path) -> None:
        clock = FakeClock()
        access = _access(tmp_path, clock)
        access.confirmed(ALICE, "reg", "team/app", ["sha256:m"])
        fps = Fingerprints(b"another node", b"cluster")  # a peer: its own node key, the same cluster key
        assert access.evidence(fps.cluster(ALICE), "reg", "team/app", "sha256:m") == clock.now
        assert access.evidence(fps.cluster(MALLORY), "reg", "team/app", "sha256:m") is None
        assert access.evidence(fps.cluster(ALICE), "reg", "team/app", "sha256:other") is None

    def test_adopted_evidence_keeps_the_peers_time(self, tmp_path: Path) -> None:
        clock = FakeClock()
        access = _access(tmp_path, clock)
        access.adopt(ALICE, "reg", "team/app", clock.now - HOUR + 10, "sha256:m")
        assert access.may_serve(ALICE, "reg", "team/app", "sha256:m")
        clock.now += 11
        assert not access.may_serve(ALICE, "reg", "team/app", "sha256:m")

    def test_served_marks_the_request_and_counts(self, tmp_path: Path) -> None:
        access = _access(tmp_path, FakeClock())
        access.breakers["reg"].failed("connection refused")
        mark = begin_request()
        access.served("manifest", "reg", "team/app", "v1", "sha256:m")
        assert mark.reason == "connection refused"
        assert access.metrics.registry.get_sample_value("shoal_agent_stale_responses_total", {"kind": "manifest"}) == 1
        assert [i.reference for i in access.stale_images()] == ["v1"]


def test_manifest_children_and_accept() -> None:
    index = json.dumps({"manifests": [{"digest": "sha256:a"}, {"digest": "sha256:b"}]}).encode()
    assert manifest_children(index) == ["sha256:a", "sha256:b"]
    assert manifest_children(b"not json") == []
    assert accepted_types("application/a, application/b;q=0.5") == ["application/a", "application/b"]
    assert accepted_types("*/*") is None
