"""A throwaway CA and node certificates for the demo fleet, tests and benchmarks.

Writes the layout `shoal.p2p.tls` reads (ca.pem, node.pem, node.key). It lives with the demo
(``shoal demo`` runs its fleet with TLS from the installed package, which has no
``shoal.testing``); ``shoal.testing.pki`` re-exports it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shoal.p2p.tls import CA_FILE, CERT_FILE, KEY_FILE, zone_uri

__all__ = ["TestCA"]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class TestCA:
    """A CA whose `issue` writes a node's TLS directory."""

    __test__ = False  # not a pytest class

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, common_name: str = "shoal test CA") -> TestCA:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key=key, cert=cert)

    @classmethod
    def load(cls, directory: Path) -> TestCA:
        """The CA a scheduler keeps as ``tls.crt``/``tls.key`` (``scheduler.ca.write_new_ca``)."""
        key = serialization.load_pem_private_key((directory / "tls.key").read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{directory / 'tls.key'}: not an EC key")
        return cls(key=key, cert=x509.load_pem_x509_certificate((directory / "tls.crt").read_bytes()))

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        directory: Path,
        name: str,
        ips: tuple[str, ...] = (),
        dns_names: tuple[str, ...] = (),
        valid_for: datetime.timedelta = datetime.timedelta(hours=1),
        zone: str = "",
    ) -> Path:
        """Write ca.pem, node.pem and node.key for `name` (its IPs, DNS names and zone) into `directory`."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        alt: list[x509.GeneralName] = [x509.DNSName(n) for n in (name, *dns_names)]
        alt += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        if zone:
            alt.append(x509.UniformResourceIdentifier(zone_uri(zone)))
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + valid_for)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        for filename, data in (
            (CA_FILE, self.pem),
            (CERT_FILE, cert.public_bytes(serialization.Encoding.PEM)),
            (KEY_FILE, _pem_key(key)),
        ):
            tmp = directory / f".{filename}.tmp"
            tmp.write_bytes(data)
            os.chmod(tmp, 0o600)
            os.replace(tmp, directory / filename)
        return directory
