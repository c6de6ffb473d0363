"""``shoal agent`` flags over the config file; the chart's comma-separated scheduler list; swarm flags."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from shoal.agent.config import ConfigError, load_config
from shoal.agent.swarm_settings import SwarmSettings
from shoal.cli.agent import agent, merge_flags


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


class TestSwarmFlags:
    """--max-parents and the other swarm flags set keys of the swarm: section, over the file's."""

    def test_flags_reach_the_config(self) -> None:
        flags = {"max_parents": 3, "stall_timeout": "40s", "piece_timeout": "1m", "max_peer_links": 256}
        values = merge_flags({"registries": ["r.test"]}, flags)
        assert values == {"registries": ["r.test"], "swarm": flags}
        swarm = load_config(values).swarm
        assert (swarm.max_parents, swarm.stall_timeout, swarm.piece_timeout, swarm.max_peer_links) == (3, 40, 60, 256)

    def test_flags_override_single_keys_of_the_file(self) -> None:
        file = {"registries": ["r.test"], "swarm": {"max_parents": 8, "window": 6}}
        values = merge_flags(file, {"max_parents": 2, "stall_timeout": None})
        assert values["swarm"] == {"max_parents": 2, "window": 6}
        assert file["swarm"] == {"max_parents": 8, "window": 6}  # not changed in place
        assert merge_flags(file, {"listen": None}) == file

    def test_bad_file_section_with_a_flag(self) -> None:
        with pytest.raises(ConfigError, match=r"^swarm: want a mapping"):
            merge_flags({"swarm": "max_parents=3"}, {"max_parents": 2})

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--max-parents", "0"], "swarm.max_parents: must be positive"),
            (["--stall-timeout", "soon"], "swarm.stall_timeout: invalid duration"),
            (["--max-peer-links", "-1"], "swarm.max_peer_links: must be positive"),
        ],
    )
    def test_refused_before_start(self, args: list[str], message: str) -> None:
        result = CliRunner().invoke(agent, ["--registry", "r.test", *args])
        assert result.exit_code == 2
        assert message in result.output

    def test_help_shows_the_swarms_defaults(self) -> None:
        text = CliRunner().invoke(agent, ["--help"], terminal_width=200).output
        assert "--max-parents" in text
        assert f"[default: {SwarmSettings().max_parents}]" in text
