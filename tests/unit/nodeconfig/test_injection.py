"""Issue 16, defect 7: a registry URL cannot add TOML of its own to what node-config writes.

``parse_registry`` refuses such URLs (the first wall, tested in tests/unit/core); the
renderer escapes every string and comment whatever it is given (the second wall).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from shoal.cli.main import cli
from shoal.nodeconfig.render import Mode, Route, hosts_toml, plan, registries_drop_in, toml_string

INJECTED = 'https://registry.example.com\n[host."http://evil.example.com:5000"]\n  capabilities = ["pull"]\n#'
HOSTILE = [
    INJECTED,
    'https://r.example.com"\n[host."http://evil"]',
    "https://r.example.com\r\n[host.'http://evil']",
    "https://r.example.com\\\n",
    "https://r.example.com\x7f\x00\x1b\u2028\u0085",
    "https://r.example.com\ud800",
]


class TestRenderer:
    """Whatever the strings hold, the files parse to exactly the agent as the one mirror."""

    @pytest.mark.parametrize("origin", HOSTILE)
    def test_hosts_toml_has_only_the_agent(self, origin: str) -> None:
        text = hosts_toml(Route("registry.example.com", "registry.example.com", origin), "http://127.0.0.1:65001")
        parsed = tomllib.loads(text)
        assert list(parsed["host"]) == ["http://127.0.0.1:65001"]
        assert set(parsed) == {"server", "host"}

    @pytest.mark.parametrize("origin", HOSTILE)
    def test_drop_in_has_one_registry(self, origin: str) -> None:
        route = Route("registry.example.com", "registry.example.com", origin)
        parsed = tomllib.loads(registries_drop_in([route], "127.0.0.1:65001"))
        assert len(parsed["registry"]) == 1
        assert [m["location"] for m in parsed["registry"][0]["mirror"]] == ["127.0.0.1:65001/registry.example.com"]

    @pytest.mark.parametrize("value", ["plain", 'a"b', "a\\b", "line\nbreak", "tab\there", "\x00\x7f", "é ü 中"])
    def test_strings_round_trip(self, value: str) -> None:
        assert tomllib.loads(f"v = {toml_string(value)}")["v"] == value

    def test_plan_with_an_agent_address_holding_a_newline(self) -> None:
        files = plan({"r.example.com": "https://r.example.com"}, Mode.MIRROR, "127.0.0.1\n[x]:65001", alias_port=65001)
        parsed = tomllib.loads(files.containerd["r.example.com/hosts.toml"])
        assert set(parsed) == {"server", "host"}


class TestNodeConfigCommand:
    """``shoal node-config`` refuses the URL, names it, and writes nothing."""

    def test_newline_in_url_is_refused(self, tmp_path: Path) -> None:
        certs = tmp_path / "certs.d"
        args = ["node-config", "--registry", f"registry.example.com={INJECTED}", "--containerd-certs-dir", str(certs)]
        args += [
            "--registries-conf-dir",
            str(tmp_path / "registries.conf.d"),
            "--containerd-config",
            str(tmp_path / "c"),
        ]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2
        assert "registry registry.example.com: URL 'https://registry.example.com\\n[host." in result.output
        assert 'evil.example.com:5000"]\n' not in result.output
        assert not certs.exists() or not any(certs.rglob("hosts.toml"))
