"""The agent keeps its TLS directory holding a node certificate, enrolling with the scheduler.

The key is made here, on the node, and never leaves it: the scheduler gets a certificate
signing request plus the proof of which node this is (the Pod's projected ServiceAccount
token, or the lab's peer token), over TLS to a scheduler verified against the CA bundle.
The answer is written into the TLS directory (``ca.pem``, ``node.key``, ``node.pem``), each
file replaced atomically; everything reading the directory picks the new files up on its
next connection. A certificate is renewed at two thirds of its lifetime, and a failed
attempt is retried with backoff: until the first success the agent is a plain caching
mirror (its scheduler calls fail, its pulls go to the registry).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shoal.agent.config import AgentConfig, split_hostport
from shoal.core.hosts import is_ip_literal, is_loopback_host
from shoal.p2p.enrollment import ENROLL_PATH, SchedulerTls, write_atomically
from shoal.p2p.tls import CA_FILE, CERT_FILE, KEY_FILE, zone_uri

log = logging.getLogger(__name__)

__all__ = ["NodeEnrollment", "node_enrollment", "scheduler_tls", "tls_problem"]

RENEW_AT = 2 / 3
"""share of a certificate's lifetime after which it is renewed."""
FIRST_WAIT = 5.0
"""seconds an agent's start waits for its first certificate (so its first pulls and its peer
wire have one); past it the agent starts without, as a plain caching mirror until enrolled."""
RETRY_MIN, RETRY_MAX = 2.0, 60.0
"""seconds between failed enrollment attempts (doubling)."""
TIMEOUT = aiohttp.ClientTimeout(total=20, connect=5)
NODE_NAME_ENV = "NODE_NAME"


def renew_time(cert_pem: bytes) -> datetime.datetime:
    """When a certificate should be replaced: two thirds into its validity."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * RENEW_AT


def make_csr(name: str, ips: Sequence[str], zone: str = "") -> tuple[bytes, str]:
    """(the new private key as PEM, a CSR for ``name``, ``ips`` and ``zone`` as PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if not is_ip_literal(name):
        alt.insert(0, x509.DNSName(name))
    if zone:
        alt.append(x509.UniformResourceIdentifier(zone_uri(zone)))
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    )
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM).decode()


class EnrollmentError(Exception):
    """No scheduler issued a certificate; the message says why, per scheduler."""


class NodeEnrollment:
    """Parameters:
    tls_dir: where the node's TLS material goes.
    schedulers: scheduler base URLs (https), tried in order.
    tls: the client context towards the scheduler (verifies it against the CA bundle).
    token: reads the proof to send (called for every attempt: projected tokens rotate).
    name: the node name asked for (the scheduler decides what it grants).
    ips: the addresses asked for.
    zone: the topology zone asked for ("": whatever the scheduler finds on the Node).
    session: the agent's HTTP session (not closed here).
    clock: the current time (tests pass a fake).
    """

    def __init__(
        self,
        tls_dir: Path,
        schedulers: Sequence[str],
        tls: SchedulerTls,
        token: Callable[[], str],
        name: str,
        ips: Sequence[str],
        session: aiohttp.ClientSession,
        clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
        zone: str = "",
    ) -> None:
        self.tls_dir = tls_dir
        self.schedulers = [s.rstrip("/") for s in schedulers]
        self.tls = tls
        self.token = token
        self.name = name
        self.ips = tuple(ips)
        self.zone = zone
        self.session = session
        self.clock = clock
        self.enrolled = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def current_renewal(self) -> datetime.datetime | None:
        """When the certificate in the directory is due (None: there is none usable)."""
        try:
            return renew_time((self.tls_dir / CERT_FILE).read_bytes())
        except (OSError, ValueError):
            return None

    async def enroll_once(self) -> datetime.datetime:
        """Get a certificate and write it; returns when to renew. Raises ``EnrollmentError``."""
        key_pem, csr = make_csr(self.name, self.ips, self.zone)
        try:
            proof = self.token()
        except (OSError, ValueError) as exc:
            raise EnrollmentError(f"cannot read the enrollment token: {exc}") from None
        errors = []
        for base in self.schedulers:
            try:
                answer = await self._post(base, csr, proof)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                errors.append(f"{base}: {exc or type(exc).__name__}")
                continue
            self._write(answer, key_pem)
            return renew_time(answer["certificate"].encode())
        raise EnrollmentError("; ".join(errors) or "no scheduler")

    async def _post(self, base: str, csr: str, proof: str) -> dict[str, Any]:
        async with self.session.post(
            f"{base}{ENROLL_PATH}", json={"csr": csr, "token": proof}, ssl=self.tls.context(), timeout=TIMEOUT
        ) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}: {(await resp.text()).strip()[:300]}")
            answer = await resp.json()
        if not isinstance(answer, dict) or not all(isinstance(answer.get(k), str) for k in ("certificate", "ca")):
            raise ValueError("the answer has no certificate")
        x509.load_pem_x509_certificate(answer["certificate"].encode())  # a broken answer raises ValueError
        return answer

    def _write(self, answer: dict[str, Any], key_pem: bytes) -> None:
        self.tls_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(self.tls_dir / CA_FILE, answer["ca"].encode(), 0o644)
        write_atomically(self.tls_dir / KEY_FILE, key_pem, 0o600)
        write_atomically(self.tls_dir / CERT_FILE, answer["certificate"].encode(), 0o644)

    async def first_certificate(self, timeout: float = FIRST_WAIT) -> bool:
        """Wait (a little) until the directory holds a current certificate; True if it does."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.enrolled.wait(), timeout)
        return self.enrolled.is_set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._keep_current(), name="node enrollment")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _keep_current(self) -> None:
        retry = RETRY_MIN
        due = self.current_renewal()
        if due is not None and due > self.clock():
            self.enrolled.set()
        while True:
            if due is not None:
                wait = (due - self.clock()).total_seconds()
                if wait > 0:
                    await asyncio.sleep(wait)
            try:
                due = await self.enroll_once()
            except EnrollmentError as exc:
                log.warning("cannot get this node's certificate (retrying in %.0f s): %s", retry, exc)
                await asyncio.sleep(retry)
                retry = min(retry * 2, RETRY_MAX)
                due = None
                continue
            except Exception:  # a bug here must not stop renewals for good
                log.exception("node enrollment failed")
                await asyncio.sleep(retry)
                due = None
                continue
            retry = RETRY_MIN
            self.enrolled.set()
            log.info("node certificate for %s renewed; next renewal at %s", self.name, due.isoformat())


def scheduler_tls(config: AgentConfig) -> SchedulerTls | None:
    """The client context towards https schedulers, presenting this node's certificate."""
    if config.tls_dir is None:
        return None
    ca = config.scheduler_ca or config.tls_dir / CA_FILE
    return SchedulerTls(ca, config.tls_dir / CERT_FILE, config.tls_dir / KEY_FILE)


def node_enrollment(config: AgentConfig, session: aiohttp.ClientSession) -> NodeEnrollment | None:
    """The enrollment loop for this agent; None without a TLS directory or https schedulers."""
    schedulers = [s for s in config.schedulers if s.startswith("https://")]
    if config.tls_dir is None or not schedulers or not config.p2p_enabled:
        return None
    # enroll against the CA the operator gave; afterwards the directory's own bundle
    tls = SchedulerTls(config.scheduler_ca or config.tls_dir / CA_FILE)
    token_file = config.enroll_token_file

    def token() -> str:
        if token_file is not None:
            return token_file.read_text().strip()
        secret = config.peer_token()
        if secret is None:
            raise OSError("no --enroll-token-file and no peer token to enroll with")
        return secret

    host = split_hostport(config.advertise_address, "advertise")[0]
    name = os.environ.get(NODE_NAME_ENV) or host
    ips = [host] if is_ip_literal(host) else []
    # with a ServiceAccount token the scheduler reads the zone from the Node itself; asking for
    # another (a hand-set --zone) would only get the certificate refused
    zone = "" if token_file is not None else config.zone
    return NodeEnrollment(config.tls_dir, schedulers, tls, token, name, ips, session, zone=zone)


def tls_problem(config: AgentConfig) -> str | None:
    """Why ``config`` would send a secret in clear or could not verify its schedulers, or None.

    An http:// scheduler on another host gets the peer token in clear: only with
    ``insecure_no_tls`` (logged). On one machine (loopback) nothing crosses a network.
    """
    if not config.p2p_enabled:
        return None
    for url in config.schedulers:
        if url.startswith("https://"):
            if config.tls_dir is None:
                return f"scheduler {url}: https needs --tls-dir (where this node's certificate is kept)"
            continue
        host = url.removeprefix("http://").partition("/")[0].rpartition(":")[0].strip("[]") or url
        loopback = is_loopback_host(host)
        if not loopback and not config.insecure_no_tls:
            return (
                f"scheduler {url}: plain HTTP sends the peer token in clear; use https:// with --tls-dir, "
                "or --insecure-no-tls in a lab"
            )
        if not loopback:
            log.warning("INSECURE: --insecure-no-tls: the peer token goes to %s in clear. Labs only.", url)
    return None
