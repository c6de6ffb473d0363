"""TLS directory: mutual TLS 1.3 between two nodes, identities read back, rotation without restart."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest

from shoal.p2p.tls import PeerIdentity, TlsDirectory, TlsMaterialError, is_zone, peer_identity, zone_uri
from shoal.testing.pki import TestCA


def _handshake(server: TlsDirectory, client: TlsDirectory) -> tuple[PeerIdentity | None, PeerIdentity | None, str]:
    a, b = socket.socketpair()
    seen: dict[str, PeerIdentity | None] = {}

    def serve() -> None:
        try:
            with server.server_context().wrap_socket(a, server_side=True) as tls:
                seen["client"] = peer_identity(tls.getpeercert())
                tls.sendall(b"x")
        except (ssl.SSLError, OSError):
            a.close()

    thread = threading.Thread(target=serve)
    thread.start()
    with client.client_context().wrap_socket(b) as tls:
        seen["server"] = peer_identity(tls.getpeercert())
        version = tls.version() or ""
        tls.recv(1)
    thread.join(5)
    return seen["client"], seen["server"], version


class TestTlsDirectory:
    """Two nodes with certificates from one CA see each other's verified identity over TLS 1.3."""

    def test_mutual_tls13_with_identities(self, tmp_path: Path) -> None:
        ca = TestCA.create()
        a = TlsDirectory(ca.issue(tmp_path / "a", "node-a", ips=("10.0.0.1",)))
        b = TlsDirectory(ca.issue(tmp_path / "b", "node-b", ips=("10.0.0.2",)))
        client_id, server_id, version = _handshake(a, b)
        assert version == "TLSv1.3"
        assert client_id is not None
        assert client_id.name == "node-b"
        assert client_id.has_ip("10.0.0.2")
        assert server_id is not None
        assert server_id.name == "node-a"
        assert not server_id.has_ip("10.0.0.2")

    def test_the_zone_a_certificate_names(self, tmp_path: Path) -> None:
        ca = TestCA.create()
        a = TlsDirectory(ca.issue(tmp_path / "a", "node-a", ips=("10.0.0.1",), zone="eu-west-1a"))
        b = TlsDirectory(ca.issue(tmp_path / "b", "node-b", ips=("10.0.0.2",)))
        client_id, server_id, _ = _handshake(b, a)
        assert client_id is not None
        assert client_id.zone == "eu-west-1a"
        assert server_id is not None
        assert server_id.zone == ""

    @pytest.mark.parametrize("zone", ["", "a b", "-edge", "x" * 64, "zone/1", "ü", "us-east-1a\n"])
    def test_a_zone_is_a_label_value(self, zone: str) -> None:
        assert not is_zone(zone)
        with pytest.raises(ValueError, match="not a label value"):
            zone_uri(zone)

    def test_other_uris_name_no_zone(self) -> None:
        cert = {
            "subject": ((("commonName", "n"),),),
            "subjectAltName": (("URI", "urn:shoal:zone:a b"), ("URI", "https://x")),
        }
        identity = peer_identity(cert)
        assert identity is not None
        assert identity.zone == ""

    def test_a_certificate_from_another_ca_is_refused(self, tmp_path: Path) -> None:
        a = TlsDirectory(TestCA.create().issue(tmp_path / "a", "node-a"))
        b = TlsDirectory(TestCA.create().issue(tmp_path / "b", "node-b"))
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _handshake(a, b)

    def test_rotation_is_seen_without_a_restart(self, tmp_path: Path) -> None:
        ca = TestCA.create()
        a = TlsDirectory(ca.issue(tmp_path / "a", "node-a"))
        b = TlsDirectory(ca.issue(tmp_path / "b", "node-b"))
        first = a.server_context()
        assert a.server_context() is first
        ca.issue(tmp_path / "a", "node-a-renewed")
        assert a.server_context() is not first
        client_id, _, _ = _handshake(b, a)
        assert client_id is not None
        assert client_id.name == "node-a-renewed"

    def test_missing_material_is_named(self, tmp_path: Path) -> None:
        TestCA.create().issue(tmp_path, "node-a")
        (tmp_path / "node.pem").unlink()
        with pytest.raises(TlsMaterialError, match=r"node\.pem is missing"):
            TlsDirectory(tmp_path).client_context()
