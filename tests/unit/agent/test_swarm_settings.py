"""The agent's ``swarm:`` section: parsing, refusals, advice, and the configs built from it."""

from __future__ import annotations

import logging
import re
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from shoal.agent.access import AccessCache
from shoal.agent.config import ConfigError, load_config, load_yaml
from shoal.agent.origin import OriginSource
from shoal.agent.peer_hub import HubConfig
from shoal.agent.peer_link import peer_secret
from shoal.agent.server import Agent
from shoal.agent.swarm import SwarmConfig
from shoal.agent.swarm_settings import SwarmSettings, SwarmSettingsError, parse_swarm, swarm_configs
from shoal.agent.upstreams import Upstreams
from shoal.oci.client import new_session
from shoal.p2p.download_state import DownloadRules
from shoal.p2p.ratelimit import TokenBucket

NOT_KNOBS = {"peer_id", "address", "token", "rules", "secret", "tls"}
"""fields of the swarm's configs that are the agent's identity, not policy"""
RENAMED = {"max_links": "max_peer_links"}
"""HubConfig field -> its name in the swarm section (``max_links`` alone says nothing in YAML)"""


def _changed(settings: SwarmSettings) -> SwarmSettings:
    """Every knob moved off its default, each to a different value."""
    values: dict[str, Any] = {}
    for offset, f in enumerate(fields(settings), start=1):
        default = getattr(settings, f.name)
        values[f.name] = default + offset if isinstance(default, int) else default + offset / 4
    return replace(settings, **values)


class TestDefaults:
    """The section's defaults are the swarm's own, and it covers every knob the swarm has."""

    @pytest.mark.parametrize("config", [DownloadRules(), SwarmConfig("", "", None), HubConfig("", b"")])
    def test_every_knob_is_in_the_section(self, config: DownloadRules | SwarmConfig | HubConfig) -> None:
        settings = SwarmSettings()
        for f in fields(config):
            if f.name in NOT_KNOBS:
                continue
            name = RENAMED.get(f.name, f.name)
            assert getattr(settings, name) == getattr(config, f.name), name

    def test_defaults_build_the_swarms_defaults(self) -> None:
        swarm, hub = swarm_configs(SwarmSettings(), "10.0.0.5:65001", "t")
        assert swarm == SwarmConfig(peer_id="10.0.0.5:65001", address="10.0.0.5:65001", token="t")
        assert hub == HubConfig(peer_id="10.0.0.5:65001", secret=peer_secret("t"))


class TestParse:
    """YAML values become settings: durations with units, dashes as underscores, None skipped."""

    def test_units_and_names(self) -> None:
        settings = parse_swarm(
            {"max-parents": 3, "stall_timeout": "1m", "piece_timeout": 45, "avoid_corrupt_for": "10m", "window": None}
        )
        assert settings == replace(
            SwarmSettings(), max_parents=3, stall_timeout=60.0, piece_timeout=45.0, avoid_corrupt_for=600.0
        )

    @pytest.mark.parametrize(
        ("values", "match"),
        [
            ({"max_parents": 0}, r"^swarm\.max_parents: must be positive"),
            ({"max_peer_links": -1}, r"^swarm\.max_peer_links: must be positive"),
            ({"lanes_per_parent": 1.5}, r"^swarm\.lanes_per_parent: want a whole number"),
            ({"superseed_copies": "2"}, r"^swarm\.superseed_copies: want a whole number"),
            ({"window": True}, r"^swarm\.window: want a whole number"),
            ({"stall_timeout": "soon"}, r"^swarm\.stall_timeout: invalid duration"),
            ({"stall_timeout": "0s"}, r"^swarm\.stall_timeout: must be positive"),
            ({"heartbeat": -5}, r"^swarm\.heartbeat: duration must not be negative"),
            ({"piece_timeout": [30]}, r"^swarm\.piece_timeout: want a number of seconds or a duration"),
            ({"connect_timeout": False}, r"^swarm\.connect_timeout: want a number of seconds"),
            ({"max_parent": 3}, r"^swarm: unknown keys: max_parent$"),
        ],
    )
    def test_refused_naming_the_key(self, values: dict[str, Any], match: str) -> None:
        with pytest.raises(SwarmSettingsError, match=match):
            parse_swarm(values)
        with pytest.raises(ConfigError, match=match):
            load_config({"registries": ["r.test"], "swarm": values})

    def test_not_a_mapping(self) -> None:
        with pytest.raises(ConfigError, match=r"^swarm: want a mapping"):
            load_config({"registries": ["r.test"], "swarm": "max_parents=3"})

    def test_from_a_yaml_file(self, tmp_path: Path) -> None:
        path = tmp_path / "agent.yaml"
        path.write_text("registries: [r.test]\nswarm:\n  max-parents: 4\n  stall-timeout: 40s\n  max_peer_links: 256\n")
        config = load_config(load_yaml(path))
        assert (config.swarm.max_parents, config.swarm.stall_timeout, config.swarm.max_peer_links) == (4, 40.0, 256)

    def test_absent_is_the_defaults(self) -> None:
        assert load_config({"registries": ["r.test"]}).swarm == SwarmSettings()


class TestAdvice:
    """Values that undercut the scheduler's 15 s lease are allowed, with a reason to log."""

    def test_defaults_need_no_advice(self) -> None:
        assert SwarmSettings().advice() == []

    @pytest.mark.parametrize(
        ("values", "key"), [({"stall_timeout": 15.0}, "swarm.stall_timeout"), ({"heartbeat": 15.0}, "swarm.heartbeat")]
    )
    def test_advised_not_refused(self, values: dict[str, Any], key: str) -> None:
        (advice,) = SwarmSettings(**values).advice()
        assert advice.startswith(key)
        assert "lease TTL (15s)" in advice


class TestSwarmConfigs:
    """Each knob reaches the dataclass the swarm reads it from."""

    def test_every_value_arrives(self) -> None:
        settings = _changed(SwarmSettings())
        swarm, hub = swarm_configs(settings, "10.0.0.5:65001", None)
        for config in (swarm.rules, swarm, hub):
            for f in fields(config):
                if f.name not in NOT_KNOBS:
                    assert getattr(config, f.name) == getattr(settings, RENAMED.get(f.name, f.name)), f.name
        assert (swarm.peer_id, swarm.address, swarm.token) == ("10.0.0.5:65001", "10.0.0.5:65001", None)
        assert (hub.peer_id, hub.secret) == ("10.0.0.5:65001", peer_secret(None))


class TestBuildSwarm:
    """The agent's ``_build_swarm`` hands its config's swarm section to the swarm and the hub."""

    async def test_config_reaches_the_swarm(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        token = tmp_path / "token"
        token.write_text("s3cret\n")
        config = load_config(
            {
                "registries": ["r.test"],
                "scheduler": "http://127.0.0.1:9",
                "cache_dir": str(tmp_path / "cache"),
                "advertise": "10.0.0.5:65001",
                "peer_token_file": str(token),
                "swarm": {"max_parents": 2, "stall_timeout": "12s", "piece_timeout": "1m", "max_peer_links": 64},
            }
        )
        agent = Agent(config)
        agent.store.open()
        session = agent._session = new_session()
        try:
            agent.upstreams = Upstreams(config.registries, session, agent.metrics, AccessCache(ttl=1.0))
            agent.bucket = TokenBucket(config.ratelimit)
            origin = OriginSource(agent.upstreams, agent.store, agent.metrics, agent.bucket)
            with caplog.at_level(logging.WARNING, logger="shoal.agent.server"):
                swarm = agent._build_swarm(origin)
            try:
                assert swarm.config == SwarmConfig(
                    peer_id="10.0.0.5:65001",
                    address="10.0.0.5:65001",
                    token="s3cret",
                    rules=DownloadRules(max_parents=2, stall_timeout=12.0, piece_timeout=60.0),
                )
                assert swarm.hub.config == HubConfig("10.0.0.5:65001", peer_secret("s3cret"), max_links=64)
                advice = [r.getMessage().split()[0] for r in caplog.records if r.name == "shoal.agent.server"]
                assert advice == ["swarm.stall_timeout"]
            finally:
                await swarm.close()
        finally:
            await session.close()


class TestDocumented:
    """docs/operations.md's table lists every key with the default the code has."""

    def test_table_matches_the_defaults(self) -> None:
        text = (Path(__file__).parents[3] / "docs" / "operations.md").read_text()
        rows = re.findall(r"^\| `(\w+)` \|[^|]*\| ([^|]+) \|", text.split("## Swarm tuning", 1)[1], re.MULTILINE)
        settings = SwarmSettings()
        expected = {
            f.name: f"{v:g}s" if f.type == "float" else str(v)
            for f in fields(settings)
            for v in [getattr(settings, f.name)]
        }
        assert {key: default.strip() for key, default in rows} == expected
