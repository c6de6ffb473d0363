"""What node-config writes: parsed back with tomllib, per mode, per registry form."""

from __future__ import annotations

import tomllib

import pytest

from shoal.nodeconfig.render import DROP_IN, MARKER, Mode, plan

REGISTRIES = {
    "registry.example.com": "https://registry.example.com",
    "harbor.local:5000": "http://10.0.0.5:5000",
    "docker.io": "https://registry-1.docker.io",
}
AGENT = "127.0.0.1:65001"


def hosts(mode: Mode, domain: str = "") -> dict[str, dict[str, object]]:
    files = plan(REGISTRIES, mode, AGENT, alias_port=65001, alias_domain=domain).containerd
    return {path.removesuffix("/hosts.toml"): tomllib.loads(text) for path, text in files.items()}


class TestHostsToml:
    """One hosts.toml per routed host: the agent as mirror, the origin URL as server."""

    def test_mirror_mode_routes_the_registries_themselves(self) -> None:
        routed = hosts(Mode.MIRROR)
        assert sorted(routed) == ["docker.io", "harbor.local:5000", "registry.example.com"]
        assert routed["harbor.local:5000"] == {
            "server": "http://10.0.0.5:5000",
            "host": {"http://127.0.0.1:65001": {"capabilities": ["pull", "resolve"]}},
        }
        assert routed["docker.io"]["server"] == "https://registry-1.docker.io"

    def test_rewrite_mode_routes_alias_hosts_to_the_real_registry(self) -> None:
        routed = hosts(Mode.REWRITE)
        assert sorted(routed) == ["docker.io:65001", "harbor.local:65001", "registry.example.com:65001"]
        assert routed["harbor.local:65001"]["server"] == "http://10.0.0.5:5000"
        assert routed["registry.example.com:65001"]["server"] == "https://registry.example.com"

    def test_alias_domain(self) -> None:
        assert "harbor.local.p2p.internal:65001" in hosts(Mode.REWRITE, "p2p.internal")

    def test_both(self) -> None:
        assert len(hosts(Mode.BOTH)) == 6

    def test_every_file_starts_with_the_marker(self) -> None:
        files = plan(REGISTRIES, Mode.BOTH, AGENT, alias_port=65001)
        for text in [*files.containerd.values(), *files.registries_d.values()]:
            assert text.splitlines()[0] == MARKER


class TestDropIn:
    """containers-image: prefix = the host a Pod names, location = origin, mirror = agent path."""

    def test_mirror_and_rewrite_entries(self) -> None:
        text = plan(REGISTRIES, Mode.BOTH, AGENT, alias_port=65001).registries_d[DROP_IN]
        entries = {e["prefix"]: e for e in tomllib.loads(text)["registry"]}
        assert entries["harbor.local:5000"] == {
            "prefix": "harbor.local:5000",
            "location": "10.0.0.5:5000",
            "insecure": True,
            "mirror": [{"location": "127.0.0.1:65001/harbor.local-5000", "insecure": True}],
        }
        assert entries["harbor.local:65001"]["location"] == "10.0.0.5:5000"
        assert entries["registry.example.com"] == {
            "prefix": "registry.example.com",
            "location": "registry.example.com",
            "mirror": [{"location": "127.0.0.1:65001/registry.example.com", "insecure": True}],
        }

    def test_ipv6_registry_is_left_out_of_the_drop_in(self) -> None:
        files = plan({"[::1]:5000": "http://[::1]:5000"}, Mode.MIRROR, AGENT, alias_port=65001)
        assert tomllib.loads(files.registries_d[DROP_IN]) == {}
        assert list(files.containerd) == ["[::1]:5000/hosts.toml"]


@pytest.mark.parametrize("mode", list(Mode))
def test_plan_is_deterministic(mode: Mode) -> None:
    first = plan(REGISTRIES, mode, AGENT, alias_port=65001)
    assert first == plan(dict(reversed(list(REGISTRIES.items()))), mode, AGENT, alias_port=65001)
