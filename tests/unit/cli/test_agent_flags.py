"""``shoal agent`` flags over the config file; the chart's comma-separated scheduler list."""

from __future__ import annotations

from shoal.agent.config import load_config
from shoal.cli.agent import merge_flags


class TestMergeFlags:
    """Flags win over the file; one --scheduler with commas is several schedulers."""

    def test_comma_separated_schedulers(self) -> None:
        values = merge_flags({}, {"schedulers": ("http://s-0:8002,http://s-1:8002", "http://s-2:8002"), "listen": None})
        assert values == {"schedulers": ["http://s-0:8002", "http://s-1:8002", "http://s-2:8002"]}
        config = load_config({**values, "registries": ["registry.example.com"], "insecure_no_peer_auth": True})
        assert config.schedulers == ("http://s-0:8002", "http://s-1:8002", "http://s-2:8002")

    def test_flags_override_the_file(self) -> None:
        values = merge_flags({"listen": "0.0.0.0:1", "cache_ttl": "1h"}, {"listen": "127.0.0.1:2", "schedulers": ()})
        assert values == {"listen": "127.0.0.1:2", "cache_ttl": "1h"}
