"""The certificate authority the scheduler signs node and server certificates with.

Its key pair comes from a directory (the chart mounts a Kubernetes TLS Secret there: one it
generated, an existing one, or cert-manager's): ``tls.crt`` and ``tls.key``, or ``ca.pem`` and
``ca.key``. An optional ``ca.crt`` (or ``bundle.pem``) adds certificates agents should also
trust while a CA is being replaced. Files are re-read when they change, so a new CA takes
effect without a restart.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.p2p.enrollment import write_atomically
from shoal.p2p.tls import zone_uri

__all__ = ["CaError", "CaSource", "CertificateAuthority", "IssuedCertificate", "load_ca", "write_new_ca"]

CERT_NAMES = ("tls.crt", "ca.pem")
KEY_NAMES = ("tls.key", "ca.key")
EXTRA_TRUST = ("ca.crt", "bundle.pem")
BACKDATE = datetime.timedelta(minutes=5)
"""certificates start this long before they are issued: clocks of nodes differ a little."""

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


class CaError(ValueError):
    """The CA directory is missing a file or holds something that is not a CA key pair."""


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    pem: bytes
    """the leaf certificate (PEM)."""
    not_after: datetime.datetime


def _first(directory: Path, names: Sequence[str]) -> Path | None:
    return next((directory / n for n in names if (directory / n).is_file()), None)


def _hash_for(key: SigningKey) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


class CertificateAuthority:
    """Signs certificates with one CA key pair; ``trust_pem`` is what clients verify against."""

    def __init__(self, cert: x509.Certificate, key: SigningKey, extra_trust: bytes = b"") -> None:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not constraints.ca:
            raise CaError("the CA certificate is not a CA (basicConstraints CA:FALSE)")
        if cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
            raise CaError("the CA key does not belong to the CA certificate")
        self.cert = cert
        self.key = key
        own = cert.public_bytes(serialization.Encoding.PEM)
        self.trust_pem = own + (extra_trust if own not in extra_trust else extra_trust.replace(own, b""))

    def issue(
        self,
        public_key: PublicKey,
        name: str,
        *,
        dns_names: Sequence[str],
        ips: Sequence[str],
        valid_for: datetime.timedelta,
        client: bool,
        zone: str = "",
        now: datetime.datetime | None = None,
    ) -> IssuedCertificate:
        """A leaf for ``name``: node certificates (``client``) may authenticate both ends of a
        TLS connection; server-only ones (the scheduler's) cannot act as a node."""
        now = now or datetime.datetime.now(datetime.UTC)
        not_after = min(now + valid_for, self.cert.not_valid_after_utc)
        alt: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        alt += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        if zone:
            alt.append(x509.UniformResourceIdentifier(zone_uri(zone)))
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    True,
                    False,
                    not isinstance(public_key, ec.EllipticCurvePublicKey),
                    False,
                    False,
                    False,
                    False,
                    False,
                    False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(self.key, _hash_for(self.key))
        return IssuedCertificate(cert.public_bytes(serialization.Encoding.PEM), not_after)


def load_ca(directory: Path) -> CertificateAuthority:
    """The CA in ``directory`` (see the module docstring for the file names)."""
    cert_path, key_path = _first(directory, CERT_NAMES), _first(directory, KEY_NAMES)
    if cert_path is None or key_path is None:
        raise CaError(
            f"CA directory {directory}: want {' or '.join(CERT_NAMES)} and {' or '.join(KEY_NAMES)} "
            "(a CA certificate and its private key)"
        )
    try:
        cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise CaError(f"CA directory {directory}: cannot load the CA: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise CaError(f"CA directory {directory}: the CA key must be EC, RSA or Ed25519")
    extra_path = _first(directory, EXTRA_TRUST)
    extra = extra_path.read_bytes() if extra_path is not None else b""
    try:
        return CertificateAuthority(cert, key, extra)
    except x509.ExtensionNotFound:
        raise CaError(f"CA directory {directory}: the certificate has no basicConstraints (not a CA)") from None
    except CaError as exc:
        raise CaError(f"CA directory {directory}: {exc}") from None


def ca_stamp(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when the CA files are replaced (a Secret update swaps a symlink)."""
    stamp = []
    for name in (*CERT_NAMES, *KEY_NAMES, *EXTRA_TRUST):
        try:
            st = os.stat(directory / name)
        except FileNotFoundError:
            continue
        stamp.append((name, st.st_ino, st.st_mtime_ns))
    return tuple(stamp)


class CaSource:
    """The CA of a directory, loaded again when its files change (a rotated Secret)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._stamp = ca_stamp(directory)
        self._ca = load_ca(directory)

    def current(self) -> CertificateAuthority:
        stamp = ca_stamp(self.directory)
        if stamp != self._stamp:
            self._ca = load_ca(self.directory)  # a broken replacement raises: the caller refuses to issue
            self._stamp = stamp
        return self._ca


def write_new_ca(
    directory: Path, common_name: str = "shoal CA", valid_for: datetime.timedelta = datetime.timedelta(days=365)
) -> Path:
    """Create a CA key pair as ``tls.crt``/``tls.key`` (for ``shoal demo`` and labs; the chart
    generates its own or takes cert-manager's)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomically(directory / "tls.key", key_pem, 0o600)
    write_atomically(directory / "tls.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return directory / "tls.crt"
