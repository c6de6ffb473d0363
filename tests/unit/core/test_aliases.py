"""Alias hosts and path names, and the table the agent maps them back with."""

from __future__ import annotations

import pytest

from shoal.core.aliases import AliasError, alias_host, alias_table, path_name


@pytest.mark.parametrize(
    ("registry", "domain", "expected"),
    [
        ("registry.example.com", "", "registry.example.com:65001"),
        ("harbor.local:5000", "", "harbor.local:65001"),
        ("docker.io", "", "docker.io:65001"),
        ("Registry.Example.com", "", "registry.example.com:65001"),
        ("harbor.local:5000", "p2p.internal", "harbor.local.p2p.internal:65001"),
        ("[::1]:5000", "", "[::1]:65001"),
    ],
)
def test_alias_host(registry: str, domain: str, expected: str) -> None:
    assert alias_host(registry, 65001, domain) == expected


@pytest.mark.parametrize(
    ("registry", "expected"),
    [
        ("registry.example.com", "registry.example.com"),
        ("harbor.local:5000", "harbor.local-5000"),
        ("127.0.0.1:5000", "127.0.0.1-5000"),
        ("[::1]:5000", None),
    ],
)
def test_path_name(registry: str, expected: str | None) -> None:
    assert path_name(registry) == expected


class TestTable:
    """alias -> registry; collisions are refused at configuration time."""

    def test_table(self) -> None:
        table = alias_table(["harbor.local:5000", "registry.example.com"], 65001)
        assert table == {
            "harbor.local-5000": "harbor.local:5000",
            "harbor.local:65001": "harbor.local:5000",
            "registry.example.com:65001": "registry.example.com",
        }

    def test_no_port_no_hosts(self) -> None:
        assert alias_table(["harbor.local:5000"], None) == {"harbor.local-5000": "harbor.local:5000"}

    def test_shared_alias(self) -> None:
        with pytest.raises(AliasError, match="share the alias"):
            alias_table(["harbor.local:5000", "harbor.local:5001"], 65001)

    def test_alias_that_is_a_registry(self) -> None:
        with pytest.raises(AliasError, match="itself a configured registry"):
            alias_table(["harbor.local:5000", "harbor.local:65001"], 65001)

    def test_a_registry_on_the_p2p_port_needs_a_domain(self) -> None:
        assert "harbor.local:65001" not in alias_table(["harbor.local:65001"], 65001)
        assert alias_table(["harbor.local:65001"], 65001, "p2p.internal") == {
            "harbor.local-65001": "harbor.local:65001",
            "harbor.local.p2p.internal:65001": "harbor.local:65001",
        }

    def test_lenient_table_leaves_ambiguous_aliases_out(self) -> None:
        # the agent also serves mirror mode: two ports of one host must not stop it
        table = alias_table(["harbor.local:5000", "harbor.local:5001"], 65001, strict=False)
        assert table == {"harbor.local-5000": "harbor.local:5000", "harbor.local-5001": "harbor.local:5001"}
        assert alias_table(["a.io:5000", "a.io:65001"], 65001, strict=False) == {
            "a.io-5000": "a.io:5000",
            "a.io-65001": "a.io:65001",
        }

    def test_bad_domain(self) -> None:
        with pytest.raises(AliasError, match="alias domain"):
            alias_table(["a.io"], 65001, "bad domain")
