"""The agent's side of enrollment: its CSR, when it renews, and which scheduler URLs it accepts."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

import pytest
from cryptography import x509

from shoal.agent import enrollment as enrollment_module
from shoal.agent.config import AgentConfig
from shoal.agent.enrollment import (
    EnrollmentError,
    NodeEnrollment,
    make_csr,
    node_enrollment,
    renew_time,
    tls_problem,
)
from shoal.scheduler.issuance import Grant, grant_for_lab, read_csr
from shoal.testing.pki import TestCA


def config(tmp_path: Path, *schedulers: str, **kw: object) -> AgentConfig:
    token = tmp_path / "token"
    token.write_text("t")
    return AgentConfig(registries={"r": "http://r"}, schedulers=schedulers, peer_token_file=token, **kw)  # type: ignore[arg-type]


class TestCsr:
    """The key is made here; the CSR asks for the node's name and address only."""

    def test_what_it_asks_for(self) -> None:
        key_pem, csr = make_csr("node-a", ["10.0.0.1"])
        assert b"PRIVATE KEY" in key_pem
        assert grant_for_lab(read_csr(csr), "10.0.0.1") == Grant("node-a", ("10.0.0.1",))

    def test_a_configured_zone_is_asked_for(self) -> None:
        request = read_csr(make_csr("node-a", ["10.0.0.1"], "rack-3")[1])
        assert request.zone == "rack-3"
        assert grant_for_lab(request, "10.0.0.1") == Grant("node-a", ("10.0.0.1",), "rack-3")

    def test_an_address_as_name_is_not_a_dns_name(self) -> None:
        request = read_csr(make_csr("127.0.0.2", ["127.0.0.2"])[1])
        assert request.dns_names == ()
        assert request.ips == ("127.0.0.2",)


class TestRenewal:
    """Renewal falls at two thirds of the certificate's lifetime."""

    def test_two_thirds(self, tmp_path: Path) -> None:
        TestCA.create().issue(tmp_path, "n", valid_for=datetime.timedelta(hours=3))
        cert = x509.load_pem_x509_certificate((tmp_path / "node.pem").read_bytes())
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        assert renew_time((tmp_path / "node.pem").read_bytes()) == start + (end - start) * 2 / 3


class TestTlsProblem:
    """A peer token never goes to another host in clear unless the lab flag says so."""

    def test_plain_http_off_loopback_is_refused(self, tmp_path: Path) -> None:
        problem = tls_problem(config(tmp_path, "http://10.0.0.5:8002"))
        assert problem is not None
        assert "--insecure-no-tls" in problem

    def test_the_lab_flag_allows_it(self, tmp_path: Path) -> None:
        assert tls_problem(config(tmp_path, "http://10.0.0.5:8002", insecure_no_tls=True)) is None

    def test_loopback_needs_no_flag(self, tmp_path: Path) -> None:
        assert tls_problem(config(tmp_path, "http://127.0.0.1:8002")) is None

    def test_https_needs_a_tls_directory(self, tmp_path: Path) -> None:
        problem = tls_problem(config(tmp_path, "https://s:8002"))
        assert problem is not None
        assert "--tls-dir" in problem
        assert tls_problem(config(tmp_path, "https://s:8002", tls_dir=tmp_path / "tls")) is None

    @pytest.mark.parametrize(
        ("schedulers", "enrolls"), [(("https://s:8002",), True), (("http://127.0.0.1:8002",), False)]
    )
    async def test_enrollment_only_towards_https(
        self, tmp_path: Path, schedulers: tuple[str, ...], enrolls: bool
    ) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            found = node_enrollment(config(tmp_path, *schedulers, tls_dir=tmp_path / "tls"), session)
        assert (found is not None) is enrolls

    @pytest.mark.parametrize(("with_token", "asked"), [(True, ""), (False, "rack-3")])
    async def test_a_pods_token_leaves_the_zone_to_the_node(self, tmp_path: Path, with_token: bool, asked: str) -> None:
        """With a ServiceAccount token the scheduler takes the zone from the Node: a hand-set
        --zone is not asked for (it would get the certificate refused if it differed)."""
        import aiohttp

        token = tmp_path / "sa-token"
        token.write_text("jwt")
        extra = {"enroll_token_file": token} if with_token else {}
        cfg = config(tmp_path, "https://s:8002", tls_dir=tmp_path / "tls", zone="rack-3", **extra)
        async with aiohttp.ClientSession() as session:
            found = node_enrollment(cfg, session)
        assert found is not None
        assert found.zone == asked


class FlakyEnrollment(NodeEnrollment):
    """Fails once, then gets a certificate due in 50 ms, then one due in an hour."""

    def __init__(self, session: object) -> None:
        super().__init__(Path("/nonexistent"), ["https://s:1"], None, lambda: "t", "n", (), session)  # type: ignore[arg-type]
        self.calls: list[float] = []

    async def enroll_once(self) -> datetime.datetime:
        self.calls.append(asyncio.get_running_loop().time())
        now = datetime.datetime.now(datetime.UTC)
        if len(self.calls) == 1:
            raise EnrollmentError("scheduler down")
        if len(self.calls) == 2:
            return now + datetime.timedelta(milliseconds=50)
        return now + datetime.timedelta(hours=1)


class TestKeepCurrent:
    """A failure is retried, and a certificate is renewed when due, without anyone asking."""

    async def test_retry_then_renew(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(enrollment_module, "RETRY_MIN", 0.01)
        loop = FlakyEnrollment(object())
        loop.start()
        try:
            await asyncio.wait_for(loop.enrolled.wait(), 2)
            while len(loop.calls) < 3:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
        finally:
            await loop.stop()
        assert len(loop.calls) == 3  # the hour-long certificate is not renewed yet
        assert loop.calls[1] - loop.calls[0] >= 0.01
        assert loop.calls[2] - loop.calls[1] >= 0.04
