"""Agent configuration: YAML-style keys, units, registries, and clear refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from shoal.agent.config import AgentConfig, ConfigError, load_config, load_yaml, parse_registry, split_hostport


class TestLoadConfig:
    """Keys from flags or YAML become a typed config; units are parsed."""

    def test_defaults(self) -> None:
        config = load_config({"registries": {"registry.test": "http://127.0.0.1:5000"}})
        assert config.listen == "127.0.0.1:65001"
        assert config.advertise_address == "127.0.0.1:65001"
        assert config.cache_ttl == 24 * 3600.0
        assert config.ratelimit == 512 << 20
        assert config.cache_max_size is None
        assert config.download_pattern == "p2p"
        assert not config.p2p_enabled  # no scheduler: a plain mirror
        assert config.peer_token() is None

    def test_zone_key(self) -> None:
        assert load_config({"registries": ["r.test"]}).zone == ""
        assert load_config({"registries": ["r.test"], "zone": "eu-west-1b"}).zone == "eu-west-1b"

    def test_units_and_lists(self, tmp_path: Path) -> None:
        config = load_config(
            {
                "registry": ["docker.io", "ghcr.io=http://127.0.0.1:9000/"],
                "registries": "index.docker.io, quay.io",
                "cache_dir": str(tmp_path),
                "cache_ttl": "1h30m",
                "cache_max_size": "50G",
                "ratelimit": "100M",
                "scheduler": "http://sched:8080/",
                "listen": "0.0.0.0:65001",
                "advertise": "10.0.0.5:65001",
                "auth_cache_ttl": 30,
                "peer_token_file": str(tmp_path / "token"),
                "header_timeout": "5s",
                "keepalive_timeout": "2m",
                "max_connections": 100,
            }
        )
        assert config.registries == {
            "docker.io": "https://registry-1.docker.io",
            "ghcr.io": "http://127.0.0.1:9000",
            "quay.io": "https://quay.io",
        }
        assert config.cache_dir == tmp_path
        assert config.cache_ttl == 5400.0
        assert config.cache_max_size == 50 << 30
        assert config.ratelimit == 100 << 20
        assert config.schedulers == ("http://sched:8080",)
        assert config.advertise_address == "10.0.0.5:65001"
        assert config.auth_cache_ttl == 30.0
        assert config.p2p_enabled
        assert config.connection_limits.header_timeout == 5.0
        assert config.connection_limits.keepalive_timeout == 120.0
        assert config.connection_limits.max_connections == 100

    def test_p2p_needs_a_peer_secret(self) -> None:
        """Peer authentication is on by default: p2p mode without a secret does not start."""
        p2p = {"registries": ["r.test"], "scheduler": "http://sched:8080"}
        with pytest.raises(ConfigError, match="peer secret"):
            load_config(p2p)
        lab = load_config({**p2p, "insecure_no_peer_auth": True})
        assert lab.p2p_enabled
        assert lab.peer_token() is None
        assert not load_config({"registries": ["r.test"]}).insecure_no_peer_auth  # a plain mirror needs none
        with pytest.raises(ConfigError, match="choose one"):
            load_config({**p2p, "insecure_no_peer_auth": True, "peer_token_file": "/run/token"})

    def test_peer_token_file(self, tmp_path: Path) -> None:
        token = tmp_path / "token"
        token.write_text("  secret\n")
        config = load_config({"registries": ["r.test"], "peer_token_file": str(token)})
        assert config.peer_token() == "secret"
        token.write_text("\n")
        with pytest.raises(ConfigError, match="empty"):
            config.peer_token()
        token.unlink()
        with pytest.raises(ConfigError, match="peer_token_file"):
            config.peer_token()

    @pytest.mark.parametrize(
        ("values", "match"),
        [
            ({}, "at least one"),
            ({"registries": ["r.test"], "colour": "blue"}, "unknown configuration keys: colour"),
            ({"registries": ["r.test"], "cache_ttl": "soon"}, "cache_ttl"),
            ({"registries": ["r.test"], "cache_max_size": "lots"}, "cache_max_size"),
            ({"registries": ["r.test"], "ratelimit": "-5"}, "ratelimit"),
            ({"registries": ["r.test"], "download_pattern": "torrent"}, "download_pattern"),
            ({"registries": ["r.test"], "listen": "65001"}, "listen"),
            ({"registries": ["r.test"], "listen": "host:99999"}, "listen"),
            ({"registries": ["r.test"], "advertise": "host:"}, "advertise"),
            ({"registries": ["bad_host!"]}, "registry"),
            ({"registries": ["r.test=ftp://x"]}, "http"),
            ({"registries": 5}, "registries"),
            ({"registries": ["r.test"], "zone": "eu west"}, "zone: 'eu west' is not a zone name"),
            ({"registries": ["r.test"], "zone": "x" * 64}, "zone"),
            ({"registries": ["r.test"], "zone": "us-east-1a\n"}, "zone"),
        ],
    )
    def test_refused(self, values: dict[str, Any], match: str) -> None:
        with pytest.raises(ConfigError, match=match):
            load_config(values)

    def test_frozen(self) -> None:
        config = load_config({"registries": ["r.test"]})
        with pytest.raises(AttributeError):
            config.listen = "x:1"  # type: ignore[misc]
        assert isinstance(config, AgentConfig)


class TestHelpers:
    """Host:port splitting, registry specs and YAML files."""

    @pytest.mark.parametrize(
        ("value", "expected"),
        [("127.0.0.1:65001", ("127.0.0.1", 65001)), ("[::1]:80", ("::1", 80)), ("node:0", ("node", 0))],
    )
    def test_split_hostport(self, value: str, expected: tuple[str, int]) -> None:
        assert split_hostport(value, "listen") == expected

    @pytest.mark.parametrize(
        ("spec", "expected"),
        [
            ("docker.io", ("docker.io", "https://registry-1.docker.io")),
            ("registry-1.docker.io", ("docker.io", "https://registry-1.docker.io")),
            ("registry.test=http://127.0.0.1:5000/", ("registry.test", "http://127.0.0.1:5000")),
            ("localhost:5000", ("localhost:5000", "https://localhost:5000")),
            ("ghcr.io=", ("ghcr.io", "https://ghcr.io")),
        ],
    )
    def test_parse_registry(self, spec: str, expected: tuple[str, str]) -> None:
        assert parse_registry(spec) == expected

    def test_load_yaml(self, tmp_path: Path) -> None:
        path = tmp_path / "agent.yaml"
        path.write_text("cache-ttl: 2h\nregistries:\n  registry.test: http://127.0.0.1:5000\n")
        values = load_yaml(path)
        assert values == {"cache_ttl": "2h", "registries": {"registry.test": "http://127.0.0.1:5000"}}
        assert load_config(values).cache_ttl == 7200.0
        path.write_text("- a\n- b\n")
        with pytest.raises(ConfigError, match="mapping"):
            load_yaml(path)
        path.write_text("a: [\n")
        with pytest.raises(ConfigError, match="cannot read"):
            load_yaml(path)


class TestAliases:
    """The agent answers to the webhook's alias hosts and CRI-O's path names."""

    def test_alias_port_defaults_to_listen_port(self) -> None:
        config = load_config({"registries": ["harbor.local:5000"], "listen": "0.0.0.0:65002"})
        assert config.aliases["harbor.local:65002"] == "harbor.local:5000"
        assert config.aliases["harbor.local-5000"] == "harbor.local:5000"

    def test_alias_port_and_domain(self) -> None:
        config = load_config({"registries": ["harbor.local:5000"], "alias_port": 65001, "alias_domain": "p2p.internal"})
        assert config.aliases["harbor.local.p2p.internal:65001"] == "harbor.local:5000"

    def test_two_ports_of_one_host_still_start(self) -> None:
        config = load_config({"registries": ["harbor.local:5000", "harbor.local:5001"]})
        assert "harbor.local:65001" not in config.aliases

    def test_bad_alias_domain(self) -> None:
        with pytest.raises(ConfigError, match="alias_domain"):
            load_config({"registries": ["a.io"], "alias_domain": "not a domain"})


class TestOutageSettings:
    """outage_grace, registry_timeout, outage_probe_interval and the containerd store."""

    REG: ClassVar[dict[str, Any]] = {"registries": {"registry.test": "http://127.0.0.1:5000"}}

    def test_defaults(self) -> None:
        config = load_config(self.REG)
        assert config.outage_grace == 24 * 3600.0
        assert config.registry_timeout == 5.0
        assert config.outage_probe_interval == 2.0
        assert config.containerd_content_dir is None

    def test_units_and_off(self) -> None:
        config = load_config(
            {
                **self.REG,
                "outage_grace": "0",
                "registry_timeout": "1500ms",
                "outage_probe_interval": "10s",
                "containerd_content_dir": "/var/lib/containerd/io.containerd.content.v1.content",
            }
        )
        assert config.outage_grace == 0.0
        assert config.registry_timeout == 1.5
        assert config.outage_probe_interval == 10.0
        assert config.containerd_content_dir == Path("/var/lib/containerd/io.containerd.content.v1.content")

    @pytest.mark.parametrize(
        ("values", "match"),
        [
            ({"outage_grace": "-1h"}, "outage_grace"),
            ({"registry_timeout": "0"}, "registry_timeout"),
            ({"outage_probe_interval": 0}, "outage_probe_interval"),
        ],
    )
    def test_refused(self, values: dict[str, Any], match: str) -> None:
        with pytest.raises(ConfigError, match=match):
            load_config({**self.REG, **values})
