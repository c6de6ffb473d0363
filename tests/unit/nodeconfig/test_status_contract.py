"""``shoal status`` reads what ``shoal node-config`` writes: every mode, a registry with a port."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.nodeconfig.files import apply
from shoal.nodeconfig.render import Mode, plan
from shoal.ops.runtime_config import check_runtime_config

REGISTRIES = {
    "harbor.local:5000": "https://harbor-vpc.local:5000",
    "registry.example.com": "https://registry.example.com",
}


@pytest.mark.parametrize("mode", list(Mode))
def test_status_sees_node_config_files(mode: Mode, tmp_path: Path) -> None:
    files = plan(REGISTRIES, mode, "127.0.0.1:65001", alias_port=65001)
    apply(files.containerd, tmp_path / "certs.d")
    apply(files.registries_d, tmp_path / "registries.conf.d")
    results = check_runtime_config(
        sorted(REGISTRIES), 65001, certs_dir=tmp_path / "certs.d", conf_dir=tmp_path / "registries.conf.d"
    )
    for result in results:
        assert result.ok, result
        assert not result.elsewhere, result
        expected = 2 if mode is Mode.BOTH else 1
        assert len([p for p in result.points_at_agent if p.endswith("hosts.toml")]) == expected
