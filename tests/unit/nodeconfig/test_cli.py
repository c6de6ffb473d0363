"""``shoal node-config`` end to end on temporary directories (no host paths touched)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from click.testing import CliRunner

from shoal.cli.main import cli


def run(tmp_path: Path, *args: str, config: str | None = None) -> tuple[int, str, str]:
    containerd_config = tmp_path / "config.toml"
    if config is not None:
        containerd_config.write_text(config)
    argv = [
        "node-config",
        "--containerd-certs-dir",
        str(tmp_path / "certs.d"),
        "--registries-conf-dir",
        str(tmp_path / "registries.conf.d"),
        "--containerd-config",
        str(containerd_config),
        *args,
    ]
    result = CliRunner().invoke(cli, argv)
    return result.exit_code, result.stdout, result.stderr


GOOD = 'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\nconfig_path = "{}"\n'


class TestNodeConfig:
    """Writes, re-runs, removes; says when containerd will not read the files."""

    def test_write_rerun_remove(self, tmp_path: Path) -> None:
        args = ("--registry", "harbor.local:5000=http://10.0.0.5:5000", "--agent", "127.0.0.1:65002", "--mode", "both")
        code, out, err = run(tmp_path, *args, config=GOOD.format(tmp_path / "certs.d"))
        assert code == 0, err
        assert out.count("wrote ") == 3
        assert "systemctl reload crio" in out
        assert "containerd reads" in out
        alias = tomllib.loads((tmp_path / "certs.d/harbor.local:65002/hosts.toml").read_text())
        assert alias["server"] == "http://10.0.0.5:5000"
        assert list(alias["host"]) == ["http://127.0.0.1:65002"]
        code, out, _ = run(tmp_path, *args)
        assert "reload crio" not in out  # nothing changed
        assert code == 0
        assert out.count("unchanged ") == 3
        assert "wrote" not in out
        code, out, _ = run(tmp_path, "--remove")
        assert code == 0
        assert out.count("removed ") == 3
        assert list((tmp_path / "certs.d").iterdir()) == []

    def test_config_path_not_set(self, tmp_path: Path) -> None:
        code, _, err = run(tmp_path, "--registry", "a.example.com", config="version = 2\n")
        assert code == 0
        assert "config_path is not set" in err
        code, _, err = run(tmp_path, "--registry", "a.example.com", "--require-config-path", config="version = 2\n")
        assert code == 1

    def test_no_containerd_config_only_warns(self, tmp_path: Path) -> None:
        code, _, err = run(tmp_path, "--registry", "a.example.com", "--require-config-path")  # a CRI-O node
        assert code == 0
        assert "not found" in err

    def test_dry_run_writes_nothing(self, tmp_path: Path) -> None:
        code, out, _ = run(tmp_path, "--registry", "a.example.com", "--dry-run")
        assert code == 0
        assert 'server = "https://a.example.com"' in out
        assert not (tmp_path / "certs.d").exists()

    def test_bad_input(self, tmp_path: Path) -> None:
        assert run(tmp_path)[0] == 2
        assert run(tmp_path, "--registry", "a.example.com=ftp://x")[0] == 2
        assert run(tmp_path, "--registry", "a.example.com", "--agent", "nope")[0] == 2

    def test_only_containerd(self, tmp_path: Path) -> None:
        code, out, _ = run(tmp_path, "--registry", "a.example.com", "--registries-conf-dir", "")
        assert code == 0
        assert out.count("wrote ") == 1
        assert not (tmp_path / "registries.conf.d").exists()


class TestAsTheChartRunsIt:
    """In the chart the node's directories are mounted under /host: paths are the node's, and
    containerd's config_path (the node's path) must match them (review finding: it never did,
    so the init container failed on every correctly set-up node)."""

    def test_host_root(self, tmp_path: Path) -> None:
        host = tmp_path / "host"
        (host / "etc/containerd").mkdir(parents=True)
        (host / "etc/containerd/config.toml").write_text(GOOD.format("/etc/containerd/certs.d"))
        argv = [
            "node-config",
            "--host-root",
            str(host),
            "--registry",
            "harbor.local:5000=https://harbor.local:5000",
            "--mode",
            "rewrite",
            "--require-config-path",
        ]
        result = CliRunner().invoke(cli, argv)
        assert result.exit_code == 0, result.stderr
        assert "containerd reads /etc/containerd/certs.d" in result.stdout
        assert (host / "etc/containerd/certs.d/harbor.local:65001/hosts.toml").is_file()
        assert (host / "etc/containers/registries.conf.d/shoal.conf").is_file()

    def test_private_ca_and_client_certificates_are_kept(self, tmp_path: Path) -> None:
        """containerd reads a directory's *.crt / *.cert / *.key only without a hosts.toml:
        the hosts.toml node-config writes must name them (review finding, reproduced with
        containerd 1.6: a private-CA registry stopped pulling once node-config ran)."""
        host = tmp_path / "host"
        registry_dir = host / "etc/containerd/certs.d/harbor.local:5000"
        registry_dir.mkdir(parents=True)
        for name in ("ca.crt", "client.cert", "client.key", "stray.cert"):
            (registry_dir / name).write_text("x")
        argv = ["node-config", "--host-root", str(host), "--registry", "harbor.local:5000", "--mode", "both"]
        result = CliRunner().invoke(cli, argv)
        assert result.exit_code == 0, result.stderr
        node_dir = "/etc/containerd/certs.d/harbor.local:5000"
        for routed in ("harbor.local:5000", "harbor.local:65001"):
            doc = tomllib.loads((host / f"etc/containerd/certs.d/{routed}/hosts.toml").read_text())
            assert doc["server"] == "https://harbor.local:5000"
            assert doc["ca"] == [f"{node_dir}/ca.crt"]
            assert doc["client"] == [[f"{node_dir}/client.cert", f"{node_dir}/client.key"]]


class TestOperatorsRegistriesConf:
    """Review finding: a drop-in's [[registry]] replaces another with the same prefix, so ours
    would drop the operator's mirrors (a corporate proxy on an egress-restricted node) or a
    ``blocked`` policy. A prefix the node already configures is left to the node."""

    def test_a_configured_prefix_is_left_alone(self, tmp_path: Path) -> None:
        conf_dir = tmp_path / "registries.conf.d"
        conf_dir.mkdir()
        (conf_dir / "00-corp.conf").write_text(
            '[[registry]]\nprefix = "docker.io"\nlocation = "proxy.corp/dockerhub"\n'
        )
        (tmp_path / "registries.conf").write_text('[[registry]]\nlocation = "quay.io"\nblocked = true\n')
        code, _, err = run(tmp_path, "--registry", "docker.io", "--registry", "quay.io", "--registry", "ghcr.io")
        assert code == 0, err
        doc = tomllib.loads((conf_dir / "shoal.conf").read_text())
        assert [r["prefix"] for r in doc["registry"]] == ["ghcr.io"]
        assert "docker.io: skipped" in (conf_dir / "shoal.conf").read_text()
        assert (conf_dir / "00-corp.conf").read_text().startswith("[[registry]]")  # untouched
