"""Write and remove node-config's files, and nothing else.

A file is node-config's when its first line is :data:`render.MARKER`. Writes are atomic
(temporary file + rename in the same directory) and skipped when the content is already
there, so running on every agent start is harmless; a file someone else wrote at one of
node-config's paths is left alone and reported.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from shoal.nodeconfig.render import MARKER, RegistryTls

__all__ = ["Outcome", "apply", "owned", "remove"]


@dataclass(slots=True)
class Outcome:
    """What one run did, per path."""

    written: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    foreign: list[Path] = field(default_factory=list)
    """Paths node-config would have written, held by a file it does not own: left as they are."""
    removed: list[Path] = field(default_factory=list)

    def merge(self, other: Outcome) -> None:
        self.written += other.written
        self.unchanged += other.unchanged
        self.foreign += other.foreign
        self.removed += other.removed


def owned(path: Path) -> bool:
    """Whether ``path`` is a regular file node-config wrote."""
    try:
        with path.open("r", encoding="utf-8", errors="replace") as f:
            return f.readline().rstrip("\n") == MARKER
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return False


def _write_atomic(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".shoal-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _owned_files(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    candidates = [p for p in root.iterdir() if p.is_file()]
    candidates += [p for d in root.iterdir() if d.is_dir() for p in d.iterdir() if p.is_file()]
    return sorted(p for p in candidates if owned(p))


def _unlink(path: Path, root: Path, outcome: Outcome) -> None:
    path.unlink(missing_ok=True)
    outcome.removed.append(path)
    parent = path.parent
    if parent != root:
        with contextlib.suppress(OSError):  # only when empty: a directory holding anyone's files stays
            parent.rmdir()


def apply(files: dict[str, str], root: Path, *, prune: bool = False) -> Outcome:
    """Make ``root/<relative path>`` hold each content; ``prune``: remove owned files not listed."""
    outcome = Outcome()
    for relative, content in sorted(files.items()):
        path = root / relative
        if path.exists() or path.is_symlink():
            if not owned(path):
                outcome.foreign.append(path)
                continue
            if path.read_text(encoding="utf-8") == content:
                outcome.unchanged.append(path)
                continue
        _write_atomic(path, content)
        outcome.written.append(path)
    if prune:
        wanted = {root / relative for relative in files}
        for path in _owned_files(root):
            if path not in wanted:
                _unlink(path, root, outcome)
    return outcome


def remove(root: Path) -> Outcome:
    """Remove every file node-config owns under ``root`` (and directories left empty)."""
    outcome = Outcome()
    for path in _owned_files(root):
        _unlink(path, root, outcome)
    return outcome


def find_tls(host_dir: Path, node_dir: Path) -> RegistryTls:
    """The docker-style TLS files in ``host_dir`` (read here), named as ``node_dir`` (how the
    node sees the same directory): ``*.crt`` CAs, ``*.cert`` with a ``*.key`` of the same stem."""
    if not host_dir.is_dir():
        return RegistryTls()
    names = sorted(p.name for p in host_dir.iterdir() if p.is_file())
    ca = tuple(str(node_dir / n) for n in names if n.endswith(".crt"))
    client = tuple(
        (str(node_dir / n), str(node_dir / (n.removesuffix(".cert") + ".key")))
        for n in names
        if n.endswith(".cert") and n.removesuffix(".cert") + ".key" in names
    )
    return RegistryTls(ca, client)


def registry_prefixes(files: list[Path]) -> frozenset[str]:
    """The ``[[registry]]`` prefixes (or locations, when a table has no prefix) that these
    containers-registries files define; files node-config owns, and unreadable ones, are skipped."""
    found: set[str] = set()
    for path in files:
        if not path.is_file() or owned(path):
            continue
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue
        for table in doc.get("registry") or []:
            if isinstance(table, dict):
                key = table.get("prefix") or table.get("location")
                if isinstance(key, str) and key:
                    found.add(key)
    return frozenset(found)
