"""shoal status says when containerd ignores certs.d (review finding: it reported OK)."""

from __future__ import annotations

from pathlib import Path

from shoal.ops.status import Status, containerd_config_check

CERTS = Path("/etc/containerd/certs.d")


class TestContainerdConfigCheck:
    """OK when config_path names the certs dir, FAIL when it does not, SKIP without containerd."""

    def test_each_case(self, tmp_path: Path) -> None:
        config = tmp_path / "config.toml"
        assert containerd_config_check(config, CERTS).status is Status.SKIP
        config.write_text("version = 2\n")
        failed = containerd_config_check(config, CERTS)
        assert failed.status is Status.FAIL
        assert "config_path is not set" in failed.summary
        config.write_text(f'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\nconfig_path = "{CERTS}"\n')
        assert containerd_config_check(config, CERTS).status is Status.OK
