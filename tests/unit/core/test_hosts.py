"""Host strings: the checks that refuse plain HTTP off this machine agree on what it is."""

from __future__ import annotations

import pytest

from shoal.core.hosts import is_ip_literal, is_loopback_host


@pytest.mark.parametrize("text", ["10.0.0.5", "127.0.0.1", "::1", "fe80::1"])
def test_ip_literals(text: str) -> None:
    assert is_ip_literal(text)


@pytest.mark.parametrize("text", ["", "node-a", "10.0.0.5:80", "[::1]", "10.0.0.256", "localhost"])
def test_not_ip_literals(text: str) -> None:
    assert not is_ip_literal(text)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.9.8.7", "::1", "[::1]"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", ["", "10.0.0.5", "localhost.example.com", "node-a", "::2", "0.0.0.0"])
def test_hosts_off_this_machine(host: str) -> None:
    assert not is_loopback_host(host)
