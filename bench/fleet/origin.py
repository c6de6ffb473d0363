"""The origin: the real CNCF distribution registry (``docker-registry``) in the origin namespace.

Its JSON access log is the exact count of origin egress: ``http.response.written`` of every
``GET .../blobs/...`` (HEAD on a manifest logs a length but sends no body; uploads log 0).
A request's log line is written just after its body went out, so :meth:`Origin.mark` makes
a marker request and waits for its line before the log is read.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.fleet.netns import Host
from bench.fleet.procs import Proc, ProcessSet
from shoal.testing.registry import htpasswd_line

__all__ = ["Origin", "blob_bytes_served", "netns_run"]

REGISTRY_PORT = 5000
REPOSITORY = "bench/app"


def netns_run(netns: str, argv: list[str], *, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def blob_bytes_served(log_lines: list[str]) -> int:
    """Sum of body bytes of blob GETs in distribution's JSON log lines."""
    total = 0
    for line in log_lines:
        if "http.response.written" not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("http.request.method") != "GET":
            continue
        if "/blobs/" not in str(entry.get("http.request.uri", "")):
            continue
        total += int(entry.get("http.response.written") or 0)
    return total


@dataclass
class Origin:
    """``docker-registry serve`` inside ``host``'s namespace, listening on its address."""

    host: Host
    workdir: Path
    procs: ProcessSet
    proc: Proc | None = None
    users: dict[str, str] = field(default_factory=dict)
    """user -> password: when given, the registry requires basic auth (a private image)"""

    @property
    def address(self) -> str:
        return f"{self.host.ip}:{REGISTRY_PORT}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "registry.log"

    def blob_file(self, digest: str) -> Path:
        """Where the registry's filesystem storage keeps a blob's bytes."""
        algorithm, _, hexpart = digest.partition(":")
        return self.workdir / "storage/docker/registry/v2/blobs" / algorithm / hexpart[:2] / hexpart / "data"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "version": 0.1,
            "log": {"formatter": "json", "level": "info", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.workdir / "storage")}, "delete": {"enabled": True}},
            "http": {"addr": self.address},
        }
        if self.users:
            htpasswd = self.workdir / "htpasswd"
            htpasswd.write_text("".join(htpasswd_line(u, p) + "\n" for u, p in self.users.items()))
            config["auth"] = {"htpasswd": {"realm": "shoal-fleet", "path": str(htpasswd)}}
        cfg = self.workdir / "config.yml"
        cfg.write_text(yaml.safe_dump(config))
        self.proc = self.procs.spawn(self.host.netns, ["docker-registry", "serve", str(cfg)], log=self.log_path)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log_path.read_text()[-2000:]}")
            if (
                netns_run(
                    self.host.netns,
                    ["curl", "-sf", *self._curl_user(), "-o", "/dev/null", f"http://{self.address}/v2/"],
                    timeout=10,
                ).returncode
                == 0
            ):
                return
            time.sleep(0.2)
        raise RuntimeError("docker-registry did not become ready in 30 s")

    def push(self, layout_ref: str, tag: str) -> str:
        """Push an OCI layout from inside the origin namespace (loopback, no shaping)."""
        dest = f"docker://{self.address}/{REPOSITORY}:{tag}"
        proc = netns_run(
            self.host.netns,
            [
                "skopeo",
                "copy",
                "--quiet",
                "--preserve-digests",
                "--dest-tls-verify=false",
                *self._dest_creds(),
                layout_ref,
                dest,
            ],
        )
        if proc.returncode != 0:
            raise RuntimeError(f"skopeo push failed: {proc.stderr.strip()[-2000:]}")
        return dest

    def credentials(self) -> str | None:
        """``user:password`` of the registry's first user (None: it needs none)."""
        return next((f"{u}:{p}" for u, p in self.users.items()), None)

    def _curl_user(self) -> list[str]:
        creds = self.credentials()
        return [] if creds is None else ["-u", creds]

    def _dest_creds(self) -> list[str]:
        creds = self.credentials()
        return [] if creds is None else [f"--dest-creds={creds}"]

    def mark(self) -> int:
        """Byte offset of the log after every earlier request's line was written."""
        token = uuid.uuid4().hex
        netns_run(
            self.host.netns,
            ["curl", "-s", "-o", "/dev/null", f"http://{self.address}/v2/?shoalmark={token}"],
            timeout=10,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            data = self.log_path.read_bytes()
            at = data.rfind(token.encode())
            if at >= 0:
                end = data.find(b"\n", at)
                return len(data) if end < 0 else end + 1
            time.sleep(0.05)
        return self.log_path.stat().st_size

    def lines_since(self, offset: int) -> list[str]:
        """Log lines between ``offset`` and now (after a fresh mark)."""
        end = self.mark()
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            chunk = f.read(end - offset)
        return chunk.decode(errors="replace").splitlines()

    def egress_since(self, offset: int) -> int:
        """Blob bytes served between ``offset`` and now (after a fresh mark)."""
        return blob_bytes_served(self.lines_since(offset))
