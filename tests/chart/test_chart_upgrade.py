"""``shoal upgrade`` keeps the installed release's values, read from the cluster like Helm does."""

from __future__ import annotations

import base64
import gzip
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

import shoal.cli.install as install_cli
from shoal.cli.install import upgrade
from shoal.ops.helm import unreachable_cluster
from shoal.testing.fake_apiserver import FakeApiServer

from .test_chart_render import agent_container, flag

NAMESPACE = "shoal-system"


def helm_release_secret(values: dict[str, Any], *, name: str = "shoal", revision: int = 1) -> dict[str, Any]:
    """A release as Helm's Secret storage driver writes it: base64(gzip(JSON)) under ``release``."""
    release = {
        "name": name,
        "namespace": NAMESPACE,
        "version": revision,
        "info": {"status": "deployed"},
        "chart": {"metadata": {"name": "shoal", "version": "0.1.0"}},
        "config": values,
        "manifest": "",
    }
    encoded = base64.b64encode(gzip.compress(json.dumps(release).encode()))
    return {
        "metadata": {
            "namespace": NAMESPACE,
            "name": f"sh.helm.release.v1.{name}.v{revision}",
            "labels": {"name": name, "owner": "helm", "status": "deployed", "version": str(revision)},
        },
        "type": "helm.sh/release.v1",
        "data": {"release": base64.b64encode(encoded).decode()},
    }


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    yield server
    server.close()


def dead_kubeconfig(tmp_path: Path) -> tuple[Path, str]:
    """A kubeconfig naming a loopback port nothing listens on, and that server's URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    cluster = {"name": "c", "cluster": {"server": url}}
    context = {"name": "x", "context": {"cluster": "c", "user": "u"}}
    users = [{"name": "u", "user": {}}]
    config = {"clusters": [cluster], "users": users, "contexts": [context], "current-context": "x"}
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "Config", **config}))
    return path, url


def run(kubeconfig: Path, *args: str) -> Result:
    return CliRunner().invoke(upgrade, ["--kubeconfig", str(kubeconfig), *args])


class TestDryRun:
    """The brief's upgrade, ``--set p2p.plusMode.cacheTTL=72h``, on an installed release."""

    def test_keeps_the_installed_values(self, apiserver: FakeApiServer, tmp_path: Path) -> None:
        installed = {"registries": "registry.example.com", "p2p": {"port": 65002}}
        apiserver.put(helm_release_secret(installed))
        kubeconfig = apiserver.write_kubeconfig(tmp_path / "kubeconfig")
        result = run(kubeconfig, "--dry-run", "--set", "p2p.plusMode.cacheTTL=72h")
        assert result.exit_code == 0, result.output
        args = agent_container([d for d in yaml.safe_load_all(result.output) if d])["args"]
        assert flag(args, "--cache-ttl") == ["72h"]
        assert flag(args, "--registry") == ["registry.example.com"]
        assert flag(args, "--listen") == ["0.0.0.0:65002"]
        assert ("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets?labelSelector=name%3Dshoal%2Cowner%3Dhelm") in (
            apiserver.requests
        )

    def test_the_latest_revision_wins(self, apiserver: FakeApiServer, tmp_path: Path) -> None:
        apiserver.put(helm_release_secret({"registries": "old.example.com"}, revision=1))
        apiserver.put(helm_release_secret({"registries": "new.example.com"}, revision=2))
        result = run(apiserver.write_kubeconfig(tmp_path / "kc"), "--dry-run", "--set", "p2p.ratelimit=1G")
        assert result.exit_code == 0, result.output
        args = agent_container([d for d in yaml.safe_load_all(result.output) if d])["args"]
        assert flag(args, "--registry") == ["new.example.com"]

    def test_no_release_is_said(self, apiserver: FakeApiServer, tmp_path: Path) -> None:
        result = run(apiserver.write_kubeconfig(tmp_path / "kc"), "--dry-run", "--set", "p2p.plusMode.cacheTTL=72h")
        assert result.exit_code == 1
        assert result.output.strip().splitlines() == [
            "Error: cannot read the installed release's values to keep them: release shoal is not installed "
            "in namespace shoal-system; --reset-values starts from the chart's defaults instead"
        ]

    def test_no_cluster_is_said_in_one_line(self, tmp_path: Path) -> None:
        kubeconfig, server = dead_kubeconfig(tmp_path)
        result = run(kubeconfig, "--dry-run", "--set", "p2p.plusMode.cacheTTL=72h")
        assert result.exit_code == 1
        lines = result.output.strip().splitlines()
        assert len(lines) == 1
        assert f"no cluster reachable at {server} (connection refused)" in lines[0]
        assert "registries is required" not in result.output

    def test_reset_values_needs_no_cluster(self, tmp_path: Path) -> None:
        kubeconfig, _ = dead_kubeconfig(tmp_path)
        result = run(kubeconfig, "--dry-run", "--reset-values", "--set", "registries=r.example.com")
        assert result.exit_code == 0, result.output


class RecordingConfig:
    """Helm's action configuration, as far as ``upgrade`` uses it."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.upgrades: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def get_values(self, name: str) -> dict[str, Any]:
        return self.values

    def upgrade(self, chart: str, name: str, values: dict[str, Any], **options: Any) -> dict[str, Any]:
        self.upgrades.append((values, options))
        return {"chart": {"metadata": {"version": "0.1.0"}}}


def test_the_upgrade_applies_the_merged_values(monkeypatch: pytest.MonkeyPatch) -> None:
    config = RecordingConfig({"registries": "registry.example.com", "p2p": {"port": 65002}})
    monkeypatch.setattr(install_cli, "helm_config", lambda *args: config)
    result = CliRunner().invoke(upgrade, ["--set", "p2p.plusMode.cacheTTL=72h"])
    assert result.exit_code == 0, result.output
    [(values, options)] = config.upgrades
    assert values == {"registries": "registry.example.com", "p2p": {"port": 65002, "plusMode": {"cacheTTL": "72h"}}}
    assert options["reset_values"] is True


@pytest.mark.parametrize(
    ("message", "said"),
    [
        (
            'kubernetes cluster unreachable: Get "https://10.0.0.1:6443/version": dial tcp 10.0.0.1:6443: i/o timeout',
            "no cluster reachable at https://10.0.0.1:6443 (i/o timeout)",
        ),
        (
            "kubernetes cluster unreachable: stat /root/.kube/config: no such file or directory",
            "no cluster reachable: kubeconfig /root/.kube/config does not exist",
        ),
        ("kubernetes cluster unreachable: Unauthorized", "no cluster reachable (Unauthorized)"),
    ],
)
def test_unreachable_cluster_in_words(message: str, said: str) -> None:
    assert unreachable_cluster(message) == said
