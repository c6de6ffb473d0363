"""The scheduler's own TLS 1.3 server side: a certificate it issues itself from the CA, renewed
in place (the same ``SSLContext`` loads the new one, so no restart and no dropped listener).

Clients present a node certificate when they have one (``CERT_OPTIONAL``): the task API and
announcements need it; the CLI's read-only calls and enrollment go without one. A client
certificate must chain to the CA and be meant for clients, which the scheduler's own
server-only certificate is not.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shoal.core.ratelog import RateLimitedLog
from shoal.p2p.enrollment import write_atomically
from shoal.p2p.presence import plain_hostport
from shoal.p2p.tls import PeerIdentity, peer_identity
from shoal.scheduler.ca import CaSource
from shoal.scheduler.peer_ids import PeerIds

__all__ = ["ServerTls", "foreign_to", "refuse_if_foreign", "request_identity"]

log = logging.getLogger(__name__)
_FOREIGN = RateLimitedLog(log, "requests naming another node than the caller's certificate refused")

RENEW_AT = 2 / 3
"""share of a certificate's lifetime after which it is replaced."""


class ServerTls:
    """Parameters:
    ca: the CA (its files may be replaced while running).
    names: DNS names clients reach this scheduler by (a ``*.`` wildcard for the replicas).
    ips: IP addresses clients reach it by.
    valid_for: lifetime of each server certificate.
    """

    def __init__(self, ca: CaSource, names: Sequence[str], ips: Sequence[str], valid_for: datetime.timedelta) -> None:
        for ip in ips:
            ipaddress.ip_address(ip)
        self.ca = ca
        self.names = tuple(names)
        self.ips = tuple(ips)
        self.valid_for = valid_for
        self._dir = tempfile.TemporaryDirectory(prefix="shoal-scheduler-tls-")
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_3
        self.context.verify_mode = ssl.CERT_OPTIONAL
        # no TLS 1.3 session tickets: asyncio's clients (agents, CLI) cannot resume a session,
        # and making two tickets per handshake costs a third of the handshake's crypto
        self.context.num_tickets = 0
        self.renew_at = datetime.datetime.min.replace(tzinfo=datetime.UTC)
        self._trust = b""
        self.renew()

    def renew(self, now: datetime.datetime | None = None) -> None:
        """Issue a fresh server certificate and load it (and the CA bundle) into the context."""
        now = now or datetime.datetime.now(datetime.UTC)
        authority = self.ca.current()
        key = ec.generate_private_key(ec.SECP256R1())
        common_name = self.names[0] if self.names else (self.ips[0] if self.ips else "shoal-scheduler")
        issued = authority.issue(
            key.public_key(),
            common_name,
            dns_names=self.names,
            ips=self.ips,
            valid_for=self.valid_for,
            client=False,
            now=now,
        )
        directory = Path(self._dir.name)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_atomically(directory / "server.key", key_pem, 0o600)
        write_atomically(
            directory / "server.pem", issued.pem + authority.cert.public_bytes(serialization.Encoding.PEM), 0o600
        )
        self.context.load_cert_chain(directory / "server.pem", directory / "server.key")
        if authority.trust_pem != self._trust:
            self.context.load_verify_locations(cadata=authority.trust_pem.decode())
            self._trust = authority.trust_pem
        self.renew_at = now + (issued.not_after - now) * RENEW_AT

    def renew_if_due(self, now: datetime.datetime | None = None) -> bool:
        now = now or datetime.datetime.now(datetime.UTC)
        if now < self.renew_at and self.ca.current().trust_pem == self._trust:
            return False
        self.renew(now)
        return True

    def close(self) -> None:
        self._dir.cleanup()


def request_identity(transport: object) -> PeerIdentity | None:
    """The verified node identity of the connection a request came on, or None."""
    get_extra_info = getattr(transport, "get_extra_info", None)
    if get_extra_info is None:
        return None
    ssl_object = get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    return peer_identity(ssl_object.getpeercert())


def foreign_to(identity: PeerIdentity, peer_id: str, address: str | None, node: str = "") -> str | None:
    """Why a caller with ``identity`` may not speak for ``peer_id`` at ``address`` (named
    ``node``), or None. Agents are known by ``HOST:PORT``: HOST must be an address of the
    caller's certificate, so a node can join, report, leave and announce only as itself."""
    for what, value in (("peer id", peer_id), ("address", address)):
        if value is None:
            continue
        try:
            host = plain_hostport(value)[0]
        except ValueError:
            return f"{what} {value[:80]!r}: want HOST:PORT"
        if not identity.has_ip(host):
            owned = ", ".join(identity.ips) or "no address"
            return f"{what} {value[:80]}: the caller's certificate is for {identity.name} ({owned})"
    if node and node != identity.name:
        return f"node {node[:80]!r}: the caller's certificate is for node {identity.name}"
    return None


def refuse_if_foreign(
    identity: PeerIdentity, peer_id: str, address: str | None, node: str = "", peer_ids: PeerIds | None = None
) -> None:
    """403 (and a rate-limited log line naming the caller) when the request speaks for another
    node, or for one peer id more than ``peer_ids`` lets one node use."""
    refusal = foreign_to(identity, peer_id, address, node)
    if refusal is None and peer_ids is not None:
        refusal = peer_ids.admit(identity.name, peer_id)
    if refusal is not None:
        _FOREIGN.note(f"{identity.name}: {refusal}")
        raise web.HTTPForbidden(text=f"{refusal}\n")
