"""What the registry said, kept on disk next to the cache for when it cannot be asked.

Three facts, each with the Unix time the registry stated it:
    * ``tags``: registry/repository:tag resolved to this digest (per media type);
    * ``confirmations``: these credentials were allowed to read this repository;
    * ``members``: this repository holds this digest (served under it, or named by a
      manifest of it).

Credentials are never stored: a confirmation is keyed by a fingerprint of them made with a
node-local key (``local_fp``), and carries the fingerprint made with the cluster's secret
(``cluster_fp``) that peers ask about. One writer (the agent's event loop); sqlite's own
file locking guards against a second agent on the same cache directory.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from shoal.oci.auth import Credentials

DB_NAME = "outage.sqlite"
KEY_NAME = "outage.key"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tags (
    registry TEXT, repository TEXT, tag TEXT, media_type TEXT, digest TEXT, at REAL,
    PRIMARY KEY (registry, repository, tag, media_type));
CREATE TABLE IF NOT EXISTS confirmations (
    local_fp TEXT, registry TEXT, repository TEXT, cluster_fp TEXT, at REAL,
    PRIMARY KEY (local_fp, registry, repository));
CREATE INDEX IF NOT EXISTS confirmations_cluster ON confirmations (cluster_fp, registry, repository);
CREATE TABLE IF NOT EXISTS members (
    registry TEXT, repository TEXT, digest TEXT, at REAL,
    PRIMARY KEY (registry, repository, digest));
"""


@dataclass(frozen=True, slots=True)
class TagAnswer:
    digest: str
    media_type: str
    at: float


class Fingerprints:
    """Keyed, non-reversible names for credentials: one for this node's disk, one for peers.

    Parameters:
        node_key: this node's secret (``node_key(cache_dir)``).
        cluster_key: the secret every agent of the cluster holds (the peer token).
    """

    def __init__(self, node_key: bytes, cluster_key: bytes) -> None:
        self._node = node_key
        self._cluster = cluster_key

    @staticmethod
    def _mac(key: bytes, creds: Credentials | None) -> str:
        if creds is None:
            return "anonymous"
        raw = f"{creds.username}\0{creds.password}".encode()
        return hmac.new(key, raw, hashlib.sha256).hexdigest()

    def local(self, creds: Credentials | None) -> str:
        return self._mac(self._node, creds)

    def cluster(self, creds: Credentials | None) -> str:
        return self._mac(self._cluster, creds)


def node_key(directory: Path) -> bytes:
    """This node's fingerprint key, made once and kept (mode 0600) in ``directory``."""
    path = directory / KEY_NAME
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        pass
    directory.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex())
    os.replace(tmp, path)
    return key


class OutageLedger:
    """The registry's last answers on tags, access and membership, in ``directory/outage.sqlite``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / DB_NAME
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # -- writes ------------------------------------------------------------------------------
    def confirm(self, local_fp: str, cluster_fp: str, registry: str, repository: str, at: float) -> None:
        self._db.execute(
            "INSERT INTO confirmations VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE "
            "SET cluster_fp = excluded.cluster_fp, at = max(at, excluded.at)",
            (local_fp, registry, repository, cluster_fp, at),
        )

    def tag(self, registry: str, repository: str, tag: str, media_type: str, digest: str, at: float) -> None:
        self._db.execute(
            "INSERT INTO tags VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE "
            "SET digest = excluded.digest, at = excluded.at WHERE excluded.at >= at",
            (registry, repository, tag, media_type, digest, at),
        )

    def members(self, registry: str, repository: str, digests: Iterable[str], at: float) -> None:
        self._db.executemany(
            "INSERT INTO members VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET at = max(at, excluded.at)",
            [(registry, repository, d, at) for d in digests],
        )

    def forget_before(self, at: float) -> None:
        """Drop what is older than any grace could use."""
        with self._db:
            for table in ("tags", "confirmations", "members"):
                self._db.execute(f"DELETE FROM {table} WHERE at < ?", (at,))

    # -- reads -------------------------------------------------------------------------------
    def confirmed_at(self, local_fp: str, registry: str, repository: str) -> float | None:
        row = self._db.execute(
            "SELECT at FROM confirmations WHERE local_fp = ? AND registry = ? AND repository = ?",
            (local_fp, registry, repository),
        ).fetchone()
        return None if row is None else float(row[0])

    def cluster_confirmed_at(self, cluster_fp: str, registry: str, repository: str) -> float | None:
        row = self._db.execute(
            "SELECT max(at) FROM confirmations WHERE cluster_fp = ? AND registry = ? AND repository = ?",
            (cluster_fp, registry, repository),
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def holds(self, registry: str, repository: str, digest: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM members WHERE registry = ? AND repository = ? AND digest = ?",
            (registry, repository, digest),
        ).fetchone()
        return row is not None

    def last_tag(self, registry: str, repository: str, tag: str, accepted: Iterable[str] | None) -> TagAnswer | None:
        """The latest answer for the tag among media types in ``accepted`` (None: any)."""
        rows = self._db.execute(
            "SELECT digest, media_type, at FROM tags WHERE registry = ? AND repository = ? AND tag = ? "
            "ORDER BY at DESC",
            (registry, repository, tag),
        ).fetchall()
        allowed = None if accepted is None else set(accepted)
        for digest, media_type, at in rows:
            if allowed is None or media_type in allowed:
                return TagAnswer(str(digest), str(media_type), float(at))
        return None
