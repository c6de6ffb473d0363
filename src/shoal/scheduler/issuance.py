"""Who gets a node certificate for what: pure decisions over facts gathered elsewhere.

In a cluster the facts come from the Kubernetes API (``kube.py``): the TokenReview of the
agent's projected ServiceAccount token, the Pod that token is bound to, and that Pod's Node.
In a lab they are the peer token and the connection's source address. Either way the
certificate says exactly what the facts prove, and a CSR asking for anything else is refused
rather than trimmed, so a caller learns at once that it asked for more than it is.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtensionOID, NameOID

from shoal.p2p.tls import ZONE_URI_PREFIX, is_zone
from shoal.scheduler.ca import PublicKey

__all__ = [
    "CsrRequest",
    "EnrollmentRefused",
    "Grant",
    "NodeFacts",
    "PodFacts",
    "Reserved",
    "TokenFacts",
    "grant_for_lab",
    "grant_for_pod",
    "read_csr",
]

MAX_CSR = 16 << 10
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"


class EnrollmentRefused(ValueError):
    """A certificate this caller may not have; the message says which fact failed."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class CsrRequest:
    """What a CSR asks for; its signature was checked (the caller holds the key)."""

    public_key: PublicKey
    common_name: str
    dns_names: tuple[str, ...]
    ips: tuple[str, ...]
    zone: str = ""
    """the topology zone it asks to be named in ("" for none)"""


@dataclass(frozen=True, slots=True)
class TokenFacts:
    """A TokenReview's answer."""

    authenticated: bool
    error: str = ""
    username: str = ""
    audiences: tuple[str, ...] = ()
    pod_name: str = ""
    pod_uid: str = ""


@dataclass(frozen=True, slots=True)
class PodFacts:
    namespace: str
    name: str
    uid: str
    service_account: str
    node_name: str
    terminating: bool = False


@dataclass(frozen=True, slots=True)
class NodeFacts:
    name: str
    internal_ips: tuple[str, ...]
    zone: str = ""
    """its ``topology.kubernetes.io/zone`` label ("" without one)"""


@dataclass(frozen=True, slots=True)
class Reserved:
    """Names and addresses no node may hold: the scheduler's own (a node certificate for them
    could stand in for the scheduler)."""

    dns_names: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()

    def holds(self, name: str) -> bool:
        name = name.lower().rstrip(".")
        for reserved in self.dns_names:
            reserved = reserved.lower().rstrip(".")
            if name == reserved or (reserved.startswith("*.") and name.endswith(reserved[1:])):
                return True
        return False

    def holds_ip(self, ip: str) -> bool:
        return any(ipaddress.ip_address(ip) == ipaddress.ip_address(r) for r in self.ips)


@dataclass(frozen=True, slots=True)
class Grant:
    """The certificate to issue: CN ``name``, SAN ``name``, ``ips`` and the ``zone``'s URI."""

    name: str
    ips: tuple[str, ...]
    zone: str = ""


def read_csr(pem: str) -> CsrRequest:
    """Parse and check a PEM CSR: its own signature, a usable key, no extension but SANs."""
    if len(pem) > MAX_CSR:
        raise EnrollmentRefused(f"csr: at most {MAX_CSR} characters", 400)
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
    except ValueError:
        raise EnrollmentRefused("csr: want a PEM certificate signing request", 400) from None
    if not csr.is_signature_valid:
        raise EnrollmentRefused("csr: its signature does not match its key", 400)
    key = csr.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise EnrollmentRefused(f"csr: an RSA key of {key.key_size} bits; want at least 2048", 400)
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise EnrollmentRefused("csr: want an EC, RSA or Ed25519 key", 400)
    names = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if len(csr.subject) != len(names) or len(names) != 1:
        raise EnrollmentRefused("csr: the subject must be exactly one common name (the node's name)", 400)
    dns: list[str] = []
    ips: list[str] = []
    zones: list[str] = []
    for ext in csr.extensions:
        if ext.oid != ExtensionOID.SUBJECT_ALTERNATIVE_NAME:
            raise EnrollmentRefused(
                f"csr: asks for extension {ext.oid.dotted_string}; only subjectAltName may be asked"
            )
        for general in ext.value:
            if isinstance(general, x509.DNSName):
                dns.append(general.value)
            elif isinstance(general, x509.IPAddress):
                ips.append(str(general.value))
            elif isinstance(general, x509.UniformResourceIdentifier) and general.value.startswith(ZONE_URI_PREFIX):
                zones.append(general.value[len(ZONE_URI_PREFIX) :])
            else:
                raise EnrollmentRefused(
                    f"csr: only DNS, IP and {ZONE_URI_PREFIX}ZONE subject alternative names may be asked", 400
                )
    if len(zones) > 1 or not all(is_zone(z) for z in zones):
        raise EnrollmentRefused("csr: at most one zone, a Kubernetes label value", 400)
    return CsrRequest(key, str(names[0]), tuple(dns), tuple(ips), zones[0] if zones else "")


def _check_asks(csr: CsrRequest, name: str, ips: Sequence[str], reserved: Reserved, zone: str) -> Grant:
    if reserved.holds(name) or any(reserved.holds_ip(ip) for ip in ips):
        raise EnrollmentRefused(f"node {name}: its name or address is the scheduler's own")
    if csr.common_name != name:
        raise EnrollmentRefused(f"csr: asks for common name {csr.common_name[:80]!r}; this caller is node {name!r}")
    extra_dns = sorted(set(csr.dns_names) - {name})
    if extra_dns:
        raise EnrollmentRefused(
            f"csr: asks for DNS names {', '.join(extra_dns)[:200]}; node {name} may have only {name}"
        )
    allowed = {ipaddress.ip_address(ip) for ip in ips}
    extra_ips = sorted(ip for ip in csr.ips if ipaddress.ip_address(ip) not in allowed)
    if extra_ips:
        raise EnrollmentRefused(
            f"csr: asks for addresses {', '.join(extra_ips)[:200]}; node {name} has {', '.join(ips) or 'none'}"
        )
    if csr.zone and csr.zone != zone:
        raise EnrollmentRefused(f"csr: asks for zone {csr.zone!r}; node {name} is in {zone or 'no zone'!r}")
    return Grant(name, tuple(ips), zone)


def grant_for_pod(
    csr: CsrRequest,
    token: TokenFacts,
    pod: PodFacts | None,
    node: NodeFacts | None,
    *,
    audience: str,
    service_account: str,
    reserved: Reserved = Reserved(),
) -> Grant:
    """The certificate an agent Pod's token proves: its own Node's name, InternalIPs and zone.

    ``service_account`` is ``NAMESPACE:NAME`` of the agent DaemonSet's ServiceAccount; the
    token must be bound to a live Pod running as it (pod name and uid from the token, checked
    against the Pod itself), and the Pod must be scheduled on ``node``.
    """
    if not token.authenticated:
        raise EnrollmentRefused(f"token: not accepted by the API server ({token.error or 'no reason given'})", 401)
    if audience not in token.audiences:
        raise EnrollmentRefused(f"token: not meant for audience {audience!r}", 401)
    namespace, _, account = service_account.partition(":")
    if token.username != f"system:serviceaccount:{namespace}:{account}":
        raise EnrollmentRefused(f"token: belongs to {token.username[:120]!r}, not the agents' ServiceAccount")
    if not token.pod_name or not token.pod_uid:
        raise EnrollmentRefused("token: not bound to a Pod (want a projected ServiceAccount token)")
    if pod is None or pod.uid != token.pod_uid or pod.namespace != namespace or pod.name != token.pod_name:
        raise EnrollmentRefused(f"token: its Pod {namespace}/{token.pod_name[:80]} no longer exists")
    if pod.terminating or pod.service_account != account:
        raise EnrollmentRefused(f"pod {pod.name}: terminating or not running as {service_account}")
    if not pod.node_name or node is None or node.name != pod.node_name:
        raise EnrollmentRefused(f"pod {pod.name}: its node {pod.node_name or '(none)'} is unknown")
    if not node.internal_ips:
        raise EnrollmentRefused(f"node {node.name}: has no InternalIP address", 503)
    if any(ipaddress.ip_address(ip).is_loopback for ip in node.internal_ips):
        raise EnrollmentRefused(f"node {node.name}: an InternalIP is a loopback address")
    return _check_asks(csr, node.name, node.internal_ips, reserved, node.zone)


def grant_for_lab(csr: CsrRequest, source: str, *, reserved: Reserved = Reserved()) -> Grant:
    """The certificate a peer-token holder gets in a lab: the name and zone it asks for, and the
    address it connects from (on one machine, where every agent connects from 127.0.0.1, any loopback
    address it asks for). The caller has already checked the peer token."""
    try:
        seen = ipaddress.ip_address(source)
    except ValueError:
        raise EnrollmentRefused("the request has no source address", 400) from None
    if seen.is_loopback:
        ips = [ip for ip in csr.ips if ipaddress.ip_address(ip).is_loopback] or [str(seen)]
    else:
        ips = [str(seen)]
    if not csr.common_name or len(csr.common_name) > 253:
        raise EnrollmentRefused("csr: want the node's name as common name", 400)
    return _check_asks(csr, csr.common_name, ips, reserved, csr.zone)
