"""Idempotent writes, foreign files left alone, --remove and --prune take only our files."""

from __future__ import annotations

from pathlib import Path

from shoal.nodeconfig.files import apply, owned, remove
from shoal.nodeconfig.render import MARKER

A = {"reg.example.com/hosts.toml": f"{MARKER}\nserver = 'a'\n"}


class TestApply:
    """What one run changes on disk."""

    def test_writes_then_leaves_unchanged(self, tmp_path: Path) -> None:
        first = apply(A, tmp_path)
        assert first.written == [tmp_path / "reg.example.com/hosts.toml"]
        mtime = (tmp_path / "reg.example.com/hosts.toml").stat().st_mtime_ns
        second = apply(A, tmp_path)
        assert second.written == []
        assert second.unchanged == first.written
        assert (tmp_path / "reg.example.com/hosts.toml").stat().st_mtime_ns == mtime

    def test_rewrites_own_file_with_new_content(self, tmp_path: Path) -> None:
        apply(A, tmp_path)
        changed = {"reg.example.com/hosts.toml": f"{MARKER}\nserver = 'b'\n"}
        assert apply(changed, tmp_path).written
        assert "'b'" in (tmp_path / "reg.example.com/hosts.toml").read_text()

    def test_foreign_file_is_left_alone(self, tmp_path: Path) -> None:
        path = tmp_path / "reg.example.com/hosts.toml"
        path.parent.mkdir()
        path.write_text('server = "https://mine"\n')
        outcome = apply(A, tmp_path)
        assert outcome.foreign == [path]
        assert not outcome.written
        assert path.read_text() == 'server = "https://mine"\n'

    def test_prune_removes_only_own_unlisted_files(self, tmp_path: Path) -> None:
        apply({**A, "old.example.com/hosts.toml": f"{MARKER}\n"}, tmp_path)
        (tmp_path / "other.example.com").mkdir()
        (tmp_path / "other.example.com/hosts.toml").write_text("server = 'x'\n")
        assert apply(A, tmp_path).removed == []  # no prune: stale files kept (fail-safe)
        outcome = apply(A, tmp_path, prune=True)
        assert outcome.removed == [tmp_path / "old.example.com/hosts.toml"]
        assert not (tmp_path / "old.example.com").exists()
        assert (tmp_path / "other.example.com/hosts.toml").exists()


class TestRemove:
    """--remove needs no registry list and keeps everyone else's files."""

    def test_remove(self, tmp_path: Path) -> None:
        apply({**A, "shoal.conf": f"{MARKER}\n"}, tmp_path)
        (tmp_path / "reg.example.com/ca.crt").write_text("cert")
        (tmp_path / "99-site.conf").write_text("[[registry]]\n")
        outcome = remove(tmp_path)
        assert sorted(outcome.removed) == [tmp_path / "reg.example.com/hosts.toml", tmp_path / "shoal.conf"]
        assert (tmp_path / "reg.example.com/ca.crt").exists()  # its directory stays with it
        assert (tmp_path / "99-site.conf").exists()
        assert remove(tmp_path).removed == []

    def test_missing_directory(self, tmp_path: Path) -> None:
        assert remove(tmp_path / "absent").removed == []

    def test_owned(self, tmp_path: Path) -> None:
        assert not owned(tmp_path)
        assert not owned(tmp_path / "nope")
