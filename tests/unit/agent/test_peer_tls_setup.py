"""The agent's peer wire is TLS when it has a TLS directory, in clear (and says so) otherwise."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from shoal.agent.config import load_config
from shoal.agent.peer_tls_setup import peer_wire_tls
from shoal.cli.agent import merge_flags
from shoal.testing.pki import TestCA

BASE = {"registries": ["r.test"]}


class TestPeerWireTls:
    def test_a_tls_directory_turns_it_on(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        directory = TestCA.create().issue(tmp_path / "tls", "node-a", ips=("10.0.0.5",))
        config = load_config(merge_flags({**BASE, "tls_dir": str(directory)}, {}))
        with caplog.at_level(logging.WARNING):
            tls = peer_wire_tls(config)
        assert tls is not None
        assert tls.directory == directory
        assert tls.server_context().minimum_version.name == "TLSv1_3"
        assert not caplog.records

    @pytest.mark.parametrize(
        ("values", "flags", "why"),
        [
            ({}, {}, "no --tls-dir"),
            ({"tls_dir": "/etc/shoal/tls"}, {"insecure_peer_wire": True}, "--insecure-peer-wire"),
            ({"insecure_peer_wire": True}, {"tls_dir": Path("/etc/shoal/tls")}, "--insecure-peer-wire"),
        ],
    )
    def test_in_clear_it_says_so(
        self, values: dict[str, object], flags: dict[str, object], why: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        config = load_config(merge_flags({**BASE, **values}, flags))
        with caplog.at_level(logging.WARNING):
            assert peer_wire_tls(config) is None
        (record,) = caplog.records
        assert record.getMessage().startswith("INSECURE: the peer wire runs in clear")
        assert why in record.getMessage()

    def test_a_directory_not_complete_yet_is_not_fatal(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        config = load_config({**BASE, "tls_dir": str(tmp_path / "not-yet")})
        with caplog.at_level(logging.WARNING):
            tls = peer_wire_tls(config)
        assert tls is not None
        assert "ca.pem is missing" in caplog.records[0].getMessage()
