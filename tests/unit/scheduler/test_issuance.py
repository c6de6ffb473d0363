"""Who gets a node certificate: a token proves one Pod on one Node, and nothing more."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.scheduler.ca import CaSource, write_new_ca
from shoal.scheduler.enrollment import ClusterProof, Enrollment
from shoal.scheduler.issuance import (
    EnrollmentRefused,
    Grant,
    NodeFacts,
    PodFacts,
    Reserved,
    TokenFacts,
    grant_for_lab,
    grant_for_pod,
    read_csr,
)

AGENTS = "shoal:shoal-agent"
TOKEN_A = TokenFacts(
    authenticated=True,
    username="system:serviceaccount:shoal:shoal-agent",
    audiences=("shoal",),
    pod_name="agent-a",
    pod_uid="uid-a",
)
POD_A = PodFacts("shoal", "agent-a", "uid-a", "shoal-agent", "node-a")
NODE_A = NodeFacts("node-a", ("10.0.0.1",))
POD_B = PodFacts("shoal", "agent-b", "uid-b", "shoal-agent", "node-b")
NODE_B = NodeFacts("node-b", ("10.0.0.2",))


def csr_pem(
    name: str, dns: tuple[str, ...] = (), ips: tuple[str, ...] = (), *, ca: bool = False, uris: tuple[str, ...] = ()
) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    )
    alt: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    alt += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    alt += [x509.UniformResourceIdentifier(uri) for uri in uris]
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def grant(
    csr: str, token: TokenFacts = TOKEN_A, pod: PodFacts | None = POD_A, node: NodeFacts | None = NODE_A
) -> Grant:
    return grant_for_pod(read_csr(csr), token, pod, node, audience="shoal", service_account=AGENTS)


class TestPodGrants:
    """A token bound to a Pod on node A gets a certificate for node A: its name and InternalIPs."""

    def test_the_pods_own_node(self) -> None:
        assert grant(csr_pem("node-a", ("node-a",), ("10.0.0.1",))) == Grant("node-a", ("10.0.0.1",))

    def test_a_csr_asking_less_gets_the_whole_node(self) -> None:
        assert grant(csr_pem("node-a")) == Grant("node-a", ("10.0.0.1",))

    def test_the_nodes_zone_label_goes_into_the_grant(self) -> None:
        zoned = dataclasses.replace(NODE_A, zone="zone-1")
        assert grant(csr_pem("node-a"), node=zoned) == Grant("node-a", ("10.0.0.1",), "zone-1")
        assert grant(csr_pem("node-a", uris=("urn:shoal:zone:zone-1",)), node=zoned).zone == "zone-1"

    @pytest.mark.parametrize("zone", ["zone-2", ""])
    def test_a_csr_asking_for_another_zone_is_refused(self, zone: str) -> None:
        node = dataclasses.replace(NODE_A, zone=zone)
        with pytest.raises(EnrollmentRefused, match="asks for zone 'zone-1'"):
            grant(csr_pem("node-a", uris=("urn:shoal:zone:zone-1",)), node=node)

    @pytest.mark.parametrize(
        "uris",
        [("urn:shoal:zone:a b",), ("urn:shoal:zone:a", "urn:shoal:zone:b"), ("https://evil.example/",)],
    )
    def test_a_csr_with_a_bad_zone_or_uri_is_a_bad_request(self, uris: tuple[str, ...]) -> None:
        with pytest.raises(EnrollmentRefused) as refused:
            read_csr(csr_pem("node-a", uris=uris))
        assert refused.value.status == 400

    def test_a_token_for_node_a_cannot_get_node_b(self) -> None:
        with pytest.raises(EnrollmentRefused, match="common name 'node-b'"):
            grant(csr_pem("node-b", ("node-b",), ("10.0.0.2",)))

    def test_a_token_for_node_a_cannot_use_node_bs_pod(self) -> None:
        # the API answers for pod agent-a; a token naming it cannot stand in for agent-b's node
        with pytest.raises(EnrollmentRefused, match="no longer exists"):
            grant(csr_pem("node-b"), pod=POD_B, node=NODE_B)

    @pytest.mark.parametrize(
        ("dns", "ips", "match"),
        [
            (("node-a", "node-b"), ("10.0.0.1",), "DNS names node-b"),
            (("node-a",), ("10.0.0.1", "10.0.0.2"), r"addresses 10\.0\.0\.2"),
            ((), ("10.0.0.2",), r"addresses 10\.0\.0\.2"),
            (("*.example.com",), (), "DNS names"),
        ],
    )
    def test_a_csr_with_extra_names_is_refused(self, dns: tuple[str, ...], ips: tuple[str, ...], match: str) -> None:
        with pytest.raises(EnrollmentRefused, match=match):
            grant(csr_pem("node-a", dns, ips))

    def test_a_csr_asking_for_a_ca_is_refused(self) -> None:
        with pytest.raises(EnrollmentRefused, match="extension"):
            grant(csr_pem("node-a", ca=True))

    def test_another_service_account_is_refused(self) -> None:
        other = dataclasses.replace(TOKEN_A, username="system:serviceaccount:team-b:default")
        with pytest.raises(EnrollmentRefused, match="not the agents' ServiceAccount"):
            grant(csr_pem("node-a"), token=other)

    def test_a_pod_running_as_another_account_is_refused(self) -> None:
        with pytest.raises(EnrollmentRefused, match="not running as"):
            grant(csr_pem("node-a"), pod=dataclasses.replace(POD_A, service_account="default"))

    def test_an_expired_token_is_refused(self) -> None:
        expired = TokenFacts(authenticated=False, error="token has expired")
        with pytest.raises(EnrollmentRefused, match="expired") as refused:
            grant(csr_pem("node-a"), token=expired)
        assert refused.value.status == 401

    def test_a_token_for_another_audience_is_refused(self) -> None:
        with pytest.raises(EnrollmentRefused, match="audience"):
            grant(csr_pem("node-a"), token=dataclasses.replace(TOKEN_A, audiences=("https://kubernetes.default.svc",)))

    def test_a_token_not_bound_to_a_pod_is_refused(self) -> None:
        with pytest.raises(EnrollmentRefused, match="not bound to a Pod"):
            grant(csr_pem("node-a"), token=dataclasses.replace(TOKEN_A, pod_name="", pod_uid=""))

    def test_a_replaced_pod_with_the_same_name_is_refused(self) -> None:
        with pytest.raises(EnrollmentRefused, match="no longer exists"):
            grant(csr_pem("node-a"), pod=dataclasses.replace(POD_A, uid="uid-new"))

    def test_a_terminating_pod_is_refused(self) -> None:
        with pytest.raises(EnrollmentRefused, match="terminating"):
            grant(csr_pem("node-a"), pod=dataclasses.replace(POD_A, terminating=True))

    def test_the_schedulers_own_names_are_never_given(self) -> None:
        reserved = Reserved(("*.shoal-scheduler-headless.shoal.svc",), ("10.0.0.9",))
        node = NodeFacts("s-0.shoal-scheduler-headless.shoal.svc", ("10.0.0.1",))
        pod = dataclasses.replace(POD_A, node_name=node.name)
        with pytest.raises(EnrollmentRefused, match="scheduler's own"):
            grant_for_pod(
                read_csr(csr_pem(node.name)),
                TOKEN_A,
                pod,
                node,
                audience="shoal",
                service_account=AGENTS,
                reserved=reserved,
            )

    @pytest.mark.parametrize(
        "pem", ["", "not a csr", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"]
    )
    def test_garbage_is_a_bad_request(self, pem: str) -> None:
        with pytest.raises(EnrollmentRefused, match="csr") as refused:
            read_csr(pem)
        assert refused.value.status == 400


class TestLabGrants:
    """In a lab the peer token proves membership and the connection proves the address."""

    def test_the_source_address(self) -> None:
        assert grant_for_lab(read_csr(csr_pem("n1", ips=("10.0.0.5",))), "10.0.0.5") == Grant("n1", ("10.0.0.5",))

    def test_the_zone_it_asks_for(self) -> None:
        csr = read_csr(csr_pem("n1", ips=("10.0.0.5",), uris=("urn:shoal:zone:rack-3",)))
        assert grant_for_lab(csr, "10.0.0.5") == Grant("n1", ("10.0.0.5",), "rack-3")

    def test_another_address_is_refused(self) -> None:
        with pytest.raises(EnrollmentRefused, match=r"addresses 10\.0\.0\.6"):
            grant_for_lab(read_csr(csr_pem("n1", ips=("10.0.0.6",))), "10.0.0.5")

    def test_one_machine_may_ask_for_loopback_addresses(self) -> None:
        assert grant_for_lab(read_csr(csr_pem("n2", ips=("127.0.0.3",))), "127.0.0.1") == Grant("n2", ("127.0.0.3",))

    def test_the_schedulers_address_is_refused(self) -> None:
        reserved = Reserved((), ("127.0.0.1",))
        with pytest.raises(EnrollmentRefused, match="scheduler's own"):
            grant_for_lab(read_csr(csr_pem("n1", ips=("127.0.0.1",))), "127.0.0.1", reserved=reserved)


class FakeCluster:
    def __init__(self) -> None:
        self.tokens = {"token-a": TOKEN_A}
        self.pods = {("shoal", "agent-a"): POD_A, ("shoal", "agent-b"): POD_B}
        self.nodes = {"node-a": NODE_A, "node-b": NODE_B}

    async def review_token(self, token: str, audience: str) -> TokenFacts:
        return self.tokens.get(token, TokenFacts(authenticated=False, error="invalid bearer token"))

    async def pod(self, namespace: str, name: str) -> PodFacts | None:
        return self.pods.get((namespace, name))

    async def node(self, name: str) -> NodeFacts | None:
        return self.nodes.get(name)


class TestIssuedCertificate:
    """What the CA signs for a grant: the node's name and addresses, short-lived, client and server."""

    async def test_a_certificate_for_the_node(self, tmp_path: Path) -> None:
        write_new_ca(tmp_path / "ca")
        ca = CaSource(tmp_path / "ca")
        enrollment = Enrollment(
            ca,
            datetime.timedelta(hours=24),
            Reserved(),
            cluster=ClusterProof(FakeCluster(), "shoal", AGENTS),
            peer_token=None,
        )
        granted, csr = await enrollment.grant(csr_pem("node-a"), "token-a", "10.9.9.9")
        issued = ca.current().issue(
            csr.public_key,
            granted.name,
            dns_names=[granted.name],
            ips=granted.ips,
            valid_for=enrollment.valid_for,
            client=True,
        )
        cert = x509.load_pem_x509_certificate(issued.pem)
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert alt.get_values_for_type(x509.DNSName) == ["node-a"]
        assert [str(ip) for ip in alt.get_values_for_type(x509.IPAddress)] == ["10.0.0.1"]
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node-a"
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert datetime.timedelta(hours=24) <= lifetime <= datetime.timedelta(hours=24, minutes=6)
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(usages) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        cert.verify_directly_issued_by(ca.current().cert)
        assert alt.get_values_for_type(x509.UniformResourceIdentifier) == []

    async def test_the_nodes_zone_is_in_its_certificate(self, tmp_path: Path) -> None:
        write_new_ca(tmp_path / "ca")
        ca = CaSource(tmp_path / "ca")
        cluster = FakeCluster()
        cluster.nodes["node-a"] = dataclasses.replace(NODE_A, zone="eu-1a")
        enrollment = Enrollment(
            ca, datetime.timedelta(hours=1), Reserved(), cluster=ClusterProof(cluster, "shoal", AGENTS), peer_token=None
        )
        granted, csr = await enrollment.grant(csr_pem("node-a"), "token-a", "10.9.9.9")
        issued = ca.current().issue(
            csr.public_key,
            granted.name,
            dns_names=[],
            ips=granted.ips,
            zone=granted.zone,
            valid_for=enrollment.valid_for,
            client=True,
        )
        alt = x509.load_pem_x509_certificate(issued.pem).extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert alt.value.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:shoal:zone:eu-1a"]

    async def test_an_unknown_token_is_refused(self, tmp_path: Path) -> None:
        write_new_ca(tmp_path / "ca")
        enrollment = Enrollment(
            CaSource(tmp_path / "ca"),
            datetime.timedelta(hours=1),
            Reserved(),
            cluster=ClusterProof(FakeCluster(), "shoal", AGENTS),
            peer_token=None,
        )
        with pytest.raises(EnrollmentRefused, match="invalid bearer token"):
            await enrollment.grant(csr_pem("node-a"), "forged", "10.0.0.1")

    async def test_lab_enrollment_needs_the_peer_token(self, tmp_path: Path) -> None:
        write_new_ca(tmp_path / "ca")
        enrollment = Enrollment(
            CaSource(tmp_path / "ca"), datetime.timedelta(hours=1), Reserved(), cluster=None, peer_token="s3cret"
        )
        with pytest.raises(EnrollmentRefused, match="peer token"):
            await enrollment.grant(csr_pem("n1", ips=("10.0.0.5",)), "guess", "10.0.0.5")
        granted, _ = await enrollment.grant(csr_pem("n1", ips=("10.0.0.5",)), "s3cret", "10.0.0.5")
        assert granted == Grant("n1", ("10.0.0.5",))

    def test_a_rotated_ca_is_loaded(self, tmp_path: Path) -> None:
        write_new_ca(tmp_path / "ca", common_name="first")
        ca = CaSource(tmp_path / "ca")
        assert ca.current().cert.subject.rfc4514_string() == "CN=first"
        write_new_ca(tmp_path / "ca", common_name="second")
        assert ca.current().cert.subject.rfc4514_string() == "CN=second"
