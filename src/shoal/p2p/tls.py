"""TLS 1.3 on the node network: the peer wire and every call to the scheduler.

Material lives in one directory, each file replaced atomically (write, then rename) by
whoever issues it: the agent's enrollment with the scheduler, cert-manager, or a mounted
Secret. Contexts are rebuilt when a file changes, so certificates rotate without restarts:
connections already open keep the context they started with.

    ca.pem    the CA bundle that issues node certificates (several during a CA rotation)
    node.pem  this node's certificate chain, leaf first
    node.key  its private key (PEM)
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "CA_FILE",
    "CERT_FILE",
    "KEY_FILE",
    "ZONE_URI_PREFIX",
    "PeerIdentity",
    "TlsContexts",
    "TlsDirectory",
    "TlsMaterialError",
    "is_zone",
    "peer_identity",
    "zone_uri",
]

CA_FILE = "ca.pem"
CERT_FILE = "node.pem"
KEY_FILE = "node.key"
ZONE_URI_PREFIX = "urn:shoal:zone:"
"""a node certificate names its topology zone as a URI subject alternative name with this
prefix: the scheduler read it from the Node's ``topology.kubernetes.io/zone`` label, so the
zone a caller's certificate names is one that caller cannot choose"""
_ZONE_RE = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")


def is_zone(text: str) -> bool:
    """True for a valid zone: a Kubernetes label value (at most 63 characters of letters,
    digits, ``-_.``, alphanumeric at both ends), never empty."""
    return _ZONE_RE.fullmatch(text) is not None


def zone_uri(zone: str) -> str:
    """The subject alternative name that carries ``zone`` (see :data:`ZONE_URI_PREFIX`)."""
    if not is_zone(zone):
        raise ValueError(f"zone {zone[:80]!r}: not a label value")
    return ZONE_URI_PREFIX + zone


class TlsMaterialError(ValueError):
    """The TLS directory is missing a file or holds one that does not load."""


class TlsContexts(Protocol):
    """What the peer wire and the scheduler clients need: the current contexts."""

    def server_context(self) -> ssl.SSLContext: ...

    def client_context(self) -> ssl.SSLContext: ...


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who a verified certificate says the peer is: its node name and addresses."""

    name: str
    dns_names: tuple[str, ...]
    ips: tuple[str, ...]
    zone: str = ""
    """the topology zone the certificate names; "" when it names none"""

    def has_ip(self, host: str) -> bool:
        try:
            wanted = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ipaddress.ip_address(ip) == wanted for ip in self.ips)


def peer_identity(cert: dict[str, Any] | None) -> PeerIdentity | None:
    """The identity in `SSLSocket.getpeercert()`'s answer; None without a verified certificate."""
    if not cert:
        return None
    common_name = ""
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                common_name = str(value)
    dns: list[str] = []
    ips: list[str] = []
    zone = ""
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "DNS":
            dns.append(str(value))
        elif kind == "IP Address":
            ips.append(str(value).strip())
        elif kind == "URI" and str(value).startswith(ZONE_URI_PREFIX) and is_zone(str(value)[len(ZONE_URI_PREFIX) :]):
            zone = str(value)[len(ZONE_URI_PREFIX) :]
    return PeerIdentity(name=common_name, dns_names=tuple(dns), ips=tuple(ips), zone=zone)


def _tls13(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


class TlsDirectory:
    """Contexts built from a TLS directory, rebuilt when its files change.

    Both sides verify the other against `ca.pem` (mutual TLS). Host names are not checked
    by OpenSSL: the caller compares the verified identity with the peer it meant to reach.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._stamp: tuple[tuple[int, int, int], ...] | None = None
        self._server: ssl.SSLContext | None = None
        self._client: ssl.SSLContext | None = None

    @property
    def ca_path(self) -> Path:
        return self.directory / CA_FILE

    @property
    def cert_path(self) -> Path:
        return self.directory / CERT_FILE

    @property
    def key_path(self) -> Path:
        return self.directory / KEY_FILE

    def server_context(self) -> ssl.SSLContext:
        self._refresh()
        assert self._server is not None
        return self._server

    def client_context(self) -> ssl.SSLContext:
        self._refresh()
        assert self._client is not None
        return self._client

    def _current_stamp(self) -> tuple[tuple[int, int, int], ...]:
        stamp = []
        for path in (self.ca_path, self.cert_path, self.key_path):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                raise TlsMaterialError(f"TLS directory {self.directory}: {path.name} is missing") from None
            stamp.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(stamp)

    def _refresh(self) -> None:
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            server = _tls13(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
            client = _tls13(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
            client.check_hostname = False
            for context in (server, client):
                try:
                    context.load_cert_chain(self.cert_path, self.key_path)
                    context.load_verify_locations(cafile=self.ca_path)
                except (ssl.SSLError, OSError) as exc:
                    raise TlsMaterialError(f"TLS directory {self.directory}: cannot load: {exc}") from None
                context.verify_mode = ssl.CERT_REQUIRED
            self._server, self._client, self._stamp = server, client, stamp
