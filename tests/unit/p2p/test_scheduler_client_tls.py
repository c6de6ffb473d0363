"""Which credential a scheduler call carries: the node certificate over TLS, the peer token only in clear."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest

from shoal.p2p.enrollment import SchedulerTls
from shoal.p2p.scheduler_client import SchedulerClient
from shoal.scheduler.ca import write_new_ca
from shoal.testing.pki import TestCA


class TestTransport:
    """The peer token never goes to an https scheduler: the certificate is the credential there."""

    async def test_https_gets_the_context_and_no_token(self, tmp_path: Path) -> None:
        ca = write_new_ca(tmp_path / "ca")
        async with aiohttp.ClientSession() as session:
            client = SchedulerClient(session, ["https://s:1"], "secret", tls=SchedulerTls(ca))
            args = client._transport("https://s:1")
        assert set(args) == {"ssl"}
        assert isinstance(args["ssl"], ssl.SSLContext)
        assert args["ssl"].minimum_version is ssl.TLSVersion.TLSv1_3
        assert args["ssl"].check_hostname

    async def test_plain_http_carries_the_token(self) -> None:
        async with aiohttp.ClientSession() as session:
            client = SchedulerClient(session, ["http://127.0.0.1:1"], "secret")
            assert client._transport("http://127.0.0.1:1") == {"headers": {"Authorization": "Bearer secret"}}

    async def test_https_without_a_tls_directory_is_an_error(self) -> None:
        async with aiohttp.ClientSession() as session:
            client = SchedulerClient(session, ["https://s:1"], "secret")
            with pytest.raises(ssl.SSLError, match="--tls-dir"):
                client._transport("https://s:1")


class TestSchedulerTls:
    """The context follows the files: a node certificate written later is presented from then on."""

    def test_picks_up_the_certificate_once_enrolled(self, tmp_path: Path) -> None:
        ca = TestCA.create()
        (tmp_path / "ca.pem").write_bytes(ca.pem)
        tls = SchedulerTls(tmp_path / "ca.pem", tmp_path / "node.pem", tmp_path / "node.key")
        before = tls.context()
        assert tls.context() is before  # nothing changed: the same context
        ca.issue(tmp_path, "node-a", ips=("10.0.0.1",))
        after = tls.context()
        assert after is not before
        assert tls.has_identity
