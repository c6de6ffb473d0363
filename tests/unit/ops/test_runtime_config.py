"""Reading the runtime's mirror config: containerd hosts.toml and CRI-O registries.conf.d."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.ops.runtime_config import check_runtime_config, is_agent

REG = "registry.example.com"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


class TestIsAgent:
    @pytest.mark.parametrize(
        ("location", "expected"),
        [
            ("http://127.0.0.1:65001", True),
            ("localhost:65001/registry.example.com", True),
            ("http://10.0.0.5:65001", True),
            ("http://10.0.0.6:65001", False),
            ("http://127.0.0.1:5000", False),
            ("https://registry.example.com", False),
        ],
    )
    def test_locations(self, location: str, expected: bool) -> None:
        assert is_agent(location, 65001, ["10.0.0.5:65001"]) is expected


class TestCheckRuntimeConfig:
    """A registry counts as configured when some file sends it to the agent."""

    def test_containerd_mirror_and_alias(self, tmp_path: Path) -> None:
        certs = tmp_path / "certs.d"
        mirror = write(certs / REG / "hosts.toml", f'server = "https://{REG}"\n[host."http://127.0.0.1:65001"]\n')
        alias = write(certs / f"{REG}:65001" / "hosts.toml", '[host."http://127.0.0.1:65001"]\n')
        (found,) = check_runtime_config([REG], 65001, certs_dir=certs, conf_dir=tmp_path / "none")
        assert found.ok
        assert found.points_at_agent == [str(mirror), str(alias)]

    def test_alias_with_a_domain(self, tmp_path: Path) -> None:
        """Review finding: the alias host was looked for without the chart's aliasDomain, so a
        working rewrite setup with a domain read as FAIL."""
        certs = tmp_path / "certs.d"
        alias = write(certs / "registry.p2p.internal:65001" / "hosts.toml", '[host."http://127.0.0.1:65001"]\n')
        (without,) = check_runtime_config(["registry"], 65001, certs_dir=certs, conf_dir=tmp_path / "none")
        assert not without.ok
        (found,) = check_runtime_config(
            ["registry"], 65001, certs_dir=certs, conf_dir=tmp_path / "none", alias_domain="p2p.internal"
        )
        assert found.points_at_agent == [str(alias)]

    def test_crio_drop_in(self, tmp_path: Path) -> None:
        conf = tmp_path / "registries.conf.d"
        write(
            conf / "shoal.conf",
            f'[[registry]]\nprefix = "{REG}"\nlocation = "{REG}"\n'
            f'[[registry.mirror]]\nlocation = "127.0.0.1:65001/{REG}"\ninsecure = true\n',
        )
        write(conf / "other.conf", '[[registry]]\nprefix = "quay.io"\nlocation = "quay.io"\n')
        found, other = check_runtime_config([REG, "quay.io"], 65001, certs_dir=tmp_path / "none", conf_dir=conf)
        assert found.ok
        assert not other.ok
        assert other.elsewhere == [f"{conf / 'other.conf'}: no mirror on port 65001"]

    def test_missing_wrong_and_unreadable(self, tmp_path: Path) -> None:
        certs = tmp_path / "certs.d"
        write(certs / REG / "hosts.toml", 'server = "https://x"\n[host."https://mirror.example.com"]\n')
        write(certs / "bad.io" / "hosts.toml", "server = \n")
        wrong, bad, absent = check_runtime_config(
            [REG, "bad.io", "absent.io"], 65001, certs_dir=certs, conf_dir=tmp_path / "none"
        )
        assert not wrong.ok
        assert "no [host] on port 65001" in wrong.elsewhere[0]
        assert not bad.ok
        assert "unreadable" in bad.elsewhere[0]
        assert not absent.ok
        assert absent.elsewhere == []
