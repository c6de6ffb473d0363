"""What agents, the CLI and the scheduler share about TLS to the scheduler and enrollment.

``POST /v1/enroll`` (only over TLS) — body ``{"csr": PEM, "token": ...}``: the agent's
certificate signing request (its key was made on the node and never leaves it) and either
its projected ServiceAccount token (in a cluster) or the peer token (in a lab). The answer
is ``{"certificate": PEM, "ca": PEM bundle, "not_after": ISO 8601}``.

Calls to the scheduler verify its certificate against the CA bundle *and* its name (the
scheduler's certificate is the only one issued for the scheduler's names), and, when the
caller holds one, present the node certificate: that is what lets an agent act as its node.
"""

from __future__ import annotations

import os
import ssl
import threading
from pathlib import Path

__all__ = ["ENROLL_PATH", "SchedulerTls", "write_atomically"]

ENROLL_PATH = "/v1/enroll"


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` by a complete file: a reader sees the old content or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _stamp(paths: tuple[Path, ...]) -> tuple[tuple[int, int], ...]:
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            out.append((0, 0))
            continue
        out.append((st.st_ino, st.st_mtime_ns))
    return tuple(out)


class SchedulerTls:
    """The client context for calls to the scheduler, rebuilt when its files change.

    Parameters:
        ca_file: the CA bundle the scheduler's certificate must chain to.
        cert_file, key_file: this node's certificate and key, presented when both exist
            (an agent before its first enrollment, and the CLI, have none).
    """

    def __init__(self, ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None) -> None:
        self.ca_file = ca_file
        self.cert_file = cert_file
        self.key_file = key_file
        self._lock = threading.Lock()
        self._stamp: tuple[tuple[int, int], ...] | None = None
        self._context: ssl.SSLContext | None = None

    def _paths(self) -> tuple[Path, ...]:
        return tuple(p for p in (self.ca_file, self.cert_file, self.key_file) if p is not None)

    @property
    def has_identity(self) -> bool:
        return self.cert_file is not None and self.key_file is not None and self.cert_file.is_file()

    def context(self) -> ssl.SSLContext:
        """Raises ``OSError`` or ``ssl.SSLError`` when the CA file is missing or broken."""
        stamp = _stamp(self._paths())
        with self._lock:
            if stamp != self._stamp or self._context is None:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.minimum_version = ssl.TLSVersion.TLSv1_3
                context.load_verify_locations(cafile=self.ca_file)
                if self.cert_file is not None and self.key_file is not None and self.cert_file.is_file():
                    try:
                        context.load_cert_chain(self.cert_file, self.key_file)
                    except (ssl.SSLError, OSError):
                        pass  # mid-rotation (cert and key from different rounds): go without, next call retries
                    else:
                        self._stamp = stamp
                else:
                    self._stamp = stamp
                self._context = context
            return self._context
