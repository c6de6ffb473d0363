"""Who a connecting peer may be, checked before anything is served: pure functions.

In clear a peer id (``host:port``) must name the connection's source address; with TLS the
verified certificate must name both. A connection's first bytes say which wire it speaks
and how long its first message is, so the hub reads exactly that much before it spends a
thread on the handshake.
"""

from __future__ import annotations

import contextlib
import ipaddress

from shoal.agent.peer_link import LinkError, split_address
from shoal.p2p.tls import PeerIdentity

__all__ = ["first_message_size", "foreign_identity", "foreign_peer_id", "own_host", "wrong_protocol"]

MAX_FIRST_MESSAGE = 1 << 10
"""a HELLO is under 300 bytes"""
MAX_TLS_RECORD = (16 << 10) + 2048


def foreign_peer_id(peer_id: str, source: str) -> str | None:
    """Why a peer connecting from ``source`` may not call itself ``peer_id`` (or None).

    Peer ids are the ``host:port`` a peer is reached at; what we learn of a peer (a corrupt
    piece, a failed request) is filed under its id, so a node must not take another's.
    Loopback connections are exempt: a lab runs many agents on one host.
    """
    try:
        host, _ = split_address(peer_id)
        claimed, seen = ipaddress.ip_address(host), ipaddress.ip_address(source)
    except (LinkError, ValueError):
        return f"peer id {peer_id[:64]!r} is not IP:PORT"
    if seen.is_loopback or claimed == seen:
        return None
    return f"peer id {peer_id} claimed from {source}"


def own_host(peer_id: str) -> str | None:
    """The address to dial from: our own (so the peer sees the address our id names), when
    the id names a specific one."""
    with contextlib.suppress(LinkError, ValueError):
        host = ipaddress.ip_address(split_address(peer_id)[0])
        if not host.is_unspecified:
            return str(host)
    return None


def first_message_size(data: bytes | bytearray) -> int | None:
    """Bytes of the first message, once its header is in ``data``; raises on anything else."""
    if data[:1] == b"\x16":  # TLS handshake record: type, version:2, length:2
        if len(data) < 5:
            return None
        length = int.from_bytes(data[3:5])
        if length > MAX_TLS_RECORD:
            raise LinkError(f"first TLS record of {length} bytes")
        return 5 + length
    if len(data) < 4:
        return None
    length = int.from_bytes(data[:4])
    if not 1 <= length <= MAX_FIRST_MESSAGE:
        raise LinkError(f"first frame of {length} bytes")
    return 4 + length


def foreign_identity(peer_id: str, source: str, identity: PeerIdentity | None) -> str | None:
    """Why a peer whose verified certificate names ``identity``, connecting from ``source``,
    may not call itself ``peer_id`` (or None): the certificate must name the address the
    connection comes from and the address the id names (no loopback exemption: a node dials
    from its own address)."""
    if identity is None:
        return "no client certificate"
    if not identity.has_ip(source):
        return f"certificate of {identity.name} ({', '.join(identity.ips) or 'no IP'}) presented from {source}"
    try:
        host, _ = split_address(peer_id)
    except LinkError:
        return f"peer id {peer_id[:64]!r} is not IP:PORT"
    if not identity.has_ip(host):
        return f"peer id {peer_id} is not an address of {identity.name}"
    return None


def wrong_protocol(first: bytes, tls: bool) -> str | None:
    """Why a connection that starts with ``first`` does not speak our peer wire (or None)."""
    speaks_tls = first[:1] == b"\x16"
    if tls and not speaks_tls:
        return "a peer connection in clear: this agent's peer wire is TLS only"
    if not tls and speaks_tls:
        return "a TLS peer connection: this agent's peer wire is in clear (--insecure-peer-wire)"
    return None
