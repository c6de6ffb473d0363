"""Run the real CNCF distribution registry (Debian ``docker-registry``, 2.8) as a test origin.

Its JSON log is our exact measure of origin egress. distribution 2.8 writes one line per
request with ``"msg": "response completed"`` (or ``"response completed with error"``) and
these fields (among others)::

    http.request.method      "GET", "HEAD", "PUT", ...
    http.request.uri         path and query, e.g. "/v2/team/app/blobs/sha256:…"
    http.request.useragent   e.g. "skopeo/1.9.3"
    http.response.status     200, 206, 404, ...
    http.response.written    bytes of body written (206: the range's bytes)
    http.response.contenttype, http.response.duration, vars.name, vars.digest

Facts measured on 2.8.2 with filesystem storage: blobs are served directly (no redirect);
``HEAD`` on a blob logs ``written: 0`` but ``HEAD`` on a manifest logs the manifest's length
although no body is sent, so only ``GET`` of ``/blobs/`` counts as egress. Uploads
(``POST``/``PATCH``/``PUT`` on ``/blobs/uploads/``) log ``written: 0``. A request's line is
written just *after* its body went out, so :meth:`DistributionRegistry.mark` first makes a
marker request and waits for its line before reading the log.
"""

from __future__ import annotations

import base64
import importlib
import json
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

from shoal.demo.imagegen import GeneratedImage
from shoal.testing.procs import (
    ManagedProcess,
    ProgramMissingError,
    StartupError,
    free_port,
    require,
    wait_until,
)
from shoal.testing.skopeo import skopeo_run

__all__ = ["DistributionRegistry", "LoggedRequest"]

_MARKER = "shoal-log-marker"


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """One request as the registry's access log recorded it."""

    method: str
    uri: str
    status: int
    written: int
    user_agent: str = ""

    @property
    def path(self) -> str:
        return self.uri.partition("?")[0]

    @property
    def is_blob_get(self) -> bool:
        """A blob download: the only requests that count as origin egress."""
        return self.method == "GET" and "/blobs/" in self.path and "/blobs/uploads/" not in self.path

    @property
    def client(self) -> str:
        """Who sent it: ``agent`` (Shoal's clients say ``shoal/<version>``), else the product
        in the user agent (``containerd``, ``skopeo``)."""
        return "agent" if self.user_agent.startswith("shoal/") else self.user_agent.split("/")[0]

    @property
    def digest(self) -> str | None:
        """The digest of a ``/blobs/<digest>`` or ``/manifests/<digest>`` path, if any."""
        last = self.path.rsplit("/", 1)[-1]
        return last if ":" in last else None


def parse_log_line(line: str) -> LoggedRequest | None:
    """A request entry from one JSON log line, or None for other lines."""
    line = line.strip().strip("\0")
    if not line.startswith("{"):
        return None
    try:
        entry: dict[str, Any] = json.loads(line)
    except ValueError:
        return None
    if "http.response.status" not in entry or "http.request.uri" not in entry:
        return None
    return LoggedRequest(
        method=str(entry.get("http.request.method", "")),
        uri=str(entry["http.request.uri"]),
        status=int(entry["http.response.status"]),
        written=int(entry.get("http.response.written", 0)),
        user_agent=str(entry.get("http.request.useragent", "")),
    )


def htpasswd_line(user: str, password: str) -> str:
    """A bcrypt htpasswd entry (distribution accepts bcrypt only)."""
    try:
        exe = require("htpasswd")
    except ProgramMissingError:
        try:
            bcrypt: Any = importlib.import_module("bcrypt")
        except ImportError:
            raise ProgramMissingError(
                "'htpasswd' is not on PATH and Python bcrypt is not installed: apt-get install -y apache2-utils"
            ) from None
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
        return f"{user}:{hashed}"
    out = subprocess.run([exe, "-Bbn", user, password], check=True, capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


class DistributionRegistry:
    """A private ``docker-registry serve`` on 127.0.0.1, stopped by PID on exit.

    Parameters:
        workdir: directory for its config, storage and logs (created if missing).
        users: user -> password; when given, the registry requires htpasswd basic auth.
        addr: ``host:port`` to listen on; default 127.0.0.1 and a free port.
        start_timeout: seconds to wait for ``/v2/`` to answer.

    Usable as ``with DistributionRegistry(tmp_path) as reg: ...``; ``reg.url`` is
    ``http://127.0.0.1:PORT`` and ``reg.host`` is ``127.0.0.1:PORT``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        users: Mapping[str, str] | None = None,
        addr: str | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.users = dict(users or {})
        self._fixed_addr = addr
        self.start_timeout = start_timeout
        self.config_path = self.workdir / "config.yml"
        self.storage = self.workdir / "storage"
        self.log_path = self.workdir / "registry.log"
        self.access_log_path = self.workdir / "access.log"
        self.host = addr or ""
        self._process: ManagedProcess | None = None

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def creds(self) -> str | None:
        """``user:password`` of the first user, for ``--src-creds`` and friends."""
        if not self.users:
            return None
        user, password = next(iter(self.users.items()))
        return f"{user}:{password}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> Self:
        if self._process is not None:
            raise RuntimeError("registry already started")
        require("docker-registry")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(exist_ok=True)
        attempts = 1 if self._fixed_addr else 3
        for attempt in range(attempts):
            self.host = self._fixed_addr or f"127.0.0.1:{free_port()}"
            self._write_config()
            self._process = ManagedProcess(
                ["docker-registry", "serve", str(self.config_path)],
                stdout=self.access_log_path,
                stderr=self.log_path,
            )
            try:
                wait_until(
                    self._answers,
                    what=f"docker-registry on {self.host}",
                    timeout=self.start_timeout,
                    process=self._process,
                )
                return self
            except StartupError:
                self._process.stop()
                self._process = None
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _write_config(self) -> None:
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "json", "fields": {"service": "registry"}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.host, "headers": {"X-Content-Type-Options": ["nosniff"]}},
        }
        if self.users:
            htpasswd = self.workdir / "htpasswd"
            lines = [htpasswd_line(u, p) for u, p in self.users.items()]
            htpasswd.write_text("\n".join(lines) + "\n")
            config["auth"] = {"htpasswd": {"realm": "shoal-test", "path": str(htpasswd)}}
        self.config_path.write_text(yaml.safe_dump(config))

    # -- HTTP ----------------------------------------------------------------------------

    def _get(self, path: str, *, timeout: float = 5.0) -> int:
        request = urllib.request.Request(self.url + path)
        if self.creds is not None:
            token = base64.b64encode(self.creds.encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read()
                status: int = response.status
                return status
        except urllib.error.HTTPError as exc:
            exc.close()
            return exc.code

    def _answers(self) -> bool:
        try:
            return self._get("/v2/", timeout=1.0) == 200
        except OSError:
            return False

    # -- the access log ------------------------------------------------------------------

    def _read_log(self) -> list[LoggedRequest]:
        if not self.log_path.exists():
            return []
        text = self.log_path.read_text(errors="replace")
        return [r for r in map(parse_log_line, text.splitlines()) if r is not None]

    def _flush_log(self, timeout: float = 10.0) -> list[LoggedRequest]:
        """Log entries up to now: send a marker request and wait until it is logged."""
        marker = f"{_MARKER}={uuid.uuid4().hex}"
        self._get(f"/v2/?{marker}")
        entries: list[LoggedRequest] = []

        def logged() -> bool:
            nonlocal entries
            entries = self._read_log()
            return any(marker in e.uri for e in entries[-50:])

        wait_until(logged, what="registry log marker", timeout=timeout, process=self._process)
        return [e for e in entries if _MARKER not in e.uri]

    def requests(self, since: int = 0) -> list[LoggedRequest]:
        """Every request logged so far (after mark ``since``), marker requests excluded."""
        return self._flush_log()[since:]

    def mark(self) -> int:
        """A point in the log; pass it to :meth:`since` or ``blob_bytes_served(since=...)``."""
        return len(self._flush_log())

    def blob_bytes_served(self, since: int = 0) -> int:
        """Sum of ``http.response.written`` over blob ``GET`` requests (origin egress)."""
        return sum(r.written for r in self.requests(since) if r.is_blob_get)

    def since(self, mark: int) -> int:
        """Blob bytes served after ``mark``."""
        return self.blob_bytes_served(since=mark)

    def blob_bytes_by_digest(self, since: int = 0) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.requests(since):
            if r.is_blob_get and r.digest is not None:
                out[r.digest] = out.get(r.digest, 0) + r.written
        return out

    # -- content -------------------------------------------------------------------------

    def ref(self, repository: str, tag: str = "latest") -> str:
        """``HOST/REPOSITORY:TAG`` on this registry."""
        return f"{self.host}/{repository}:{tag}"

    def push(self, image: GeneratedImage, repository: str, tag: str | None = None) -> str:
        """Push ``image`` with skopeo (digests preserved) and return its reference here.

        skopeo compresses uncompressed layers on the way to a registry unless told not to:
        ``--preserve-digests`` keeps the generated digests, so the registry serves exactly
        ``image.blobs``.
        """
        tag = tag or image.tag
        dest = self.ref(repository, tag)
        args = ["copy", "--all", "--preserve-digests", "--dest-tls-verify=false"]
        args.append(f"--dest-creds={self.creds}" if self.creds is not None else "--dest-no-creds")
        args += [image.layout_ref, f"docker://{dest}"]
        skopeo_run(args, workdir=self.workdir)
        return dest
