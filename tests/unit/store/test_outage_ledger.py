"""The registry's answers on disk: survive a reopen, never hold credentials."""

from __future__ import annotations

from pathlib import Path

from shoal.oci.auth import Credentials
from shoal.store.outage_ledger import Fingerprints, OutageLedger, node_key

ALICE = Credentials("alice", "s3cret")


class TestOutageLedger:
    """Tags, confirmations and membership, as written and after reopening."""

    def test_survives_reopen(self, tmp_path: Path) -> None:
        ledger = OutageLedger(tmp_path)
        ledger.tag("reg", "team/app", "v1", "application/vnd.oci.image.manifest.v1+json", "sha256:a", 10.0)
        ledger.confirm("local", "cluster", "reg", "team/app", 10.0)
        ledger.members("reg", "team/app", ["sha256:a", "sha256:b"], 10.0)
        ledger.close()
        again = OutageLedger(tmp_path)
        answer = again.last_tag("reg", "team/app", "v1", None)
        assert answer is not None
        assert answer.digest == "sha256:a"
        assert answer.at == 10.0
        assert again.confirmed_at("local", "reg", "team/app") == 10.0
        assert again.cluster_confirmed_at("cluster", "reg", "team/app") == 10.0
        assert again.confirmed_at("local", "reg", "team/other") is None
        assert again.holds("reg", "team/app", "sha256:b")
        assert not again.holds("reg", "team/other", "sha256:b")

    def test_newest_tag_answer_matching_accept(self, tmp_path: Path) -> None:
        ledger = OutageLedger(tmp_path)
        ledger.tag("reg", "app", "v1", "index", "sha256:i", 10.0)
        ledger.tag("reg", "app", "v1", "manifest", "sha256:m", 5.0)
        ledger.tag("reg", "app", "v1", "manifest", "sha256:old", 1.0)  # older answer never wins
        assert ledger.last_tag("reg", "app", "v1", None).digest == "sha256:i"  # type: ignore[union-attr]
        assert ledger.last_tag("reg", "app", "v1", ["manifest"]).digest == "sha256:m"  # type: ignore[union-attr]
        assert ledger.last_tag("reg", "app", "v1", ["other"]) is None

    def test_forget_before(self, tmp_path: Path) -> None:
        ledger = OutageLedger(tmp_path)
        ledger.confirm("l", "c", "reg", "app", 10.0)
        ledger.members("reg", "app", ["sha256:a"], 10.0)
        ledger.forget_before(11.0)
        assert ledger.confirmed_at("l", "reg", "app") is None
        assert not ledger.holds("reg", "app", "sha256:a")


class TestFingerprints:
    """Keyed: the password is not on disk, and another key gives another fingerprint."""

    def test_keyed_and_stable(self, tmp_path: Path) -> None:
        key = node_key(tmp_path)
        assert node_key(tmp_path) == key
        assert (tmp_path / "outage.key").stat().st_mode & 0o077 == 0
        fp = Fingerprints(key, b"cluster")
        assert fp.local(ALICE) == Fingerprints(key, b"other").local(ALICE)
        assert fp.cluster(ALICE) != Fingerprints(key, b"other").cluster(ALICE)
        assert fp.local(ALICE) != fp.cluster(ALICE)
        assert fp.local(None) == "anonymous"
        ledger = OutageLedger(tmp_path)
        ledger.confirm(fp.local(ALICE), fp.cluster(ALICE), "reg", "app", 1.0)
        ledger.close()
        raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
        assert b"s3cret" not in raw
