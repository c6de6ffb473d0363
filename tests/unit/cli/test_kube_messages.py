"""``shoal webhook`` and ``shoal node-ready`` outside a cluster: one message naming --kubeconfig."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from shoal.cli.main import cli


@pytest.fixture
def no_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Not in a Pod, and no kubeconfig where the client library looks."""
    from kubernetes.config import kube_config

    missing = tmp_path / "no-kubeconfig"
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(missing))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(missing))
    return missing


def test_webhook_without_kubeconfig(no_cluster: Path) -> None:
    result = CliRunner().invoke(cli, ["webhook", "--registry", "registry.example.com", "--insecure"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert f"no usable kubeconfig at {no_cluster}: pass --kubeconfig FILE" in result.output
    assert len(result.output.strip().splitlines()) <= 4


def test_webhook_with_a_file_that_is_not_a_kubeconfig(no_cluster: Path, tmp_path: Path) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("just text\n")
    args = ["webhook", "--registry", "registry.example.com", "--insecure", "--kubeconfig", str(bad)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert f"{bad}: not a kubeconfig" in result.output
    assert "object does not support" not in result.output


def test_node_ready_outside_a_pod(no_cluster: Path) -> None:
    result = CliRunner().invoke(cli, ["node-ready", "--node", "n1", "--taint", "shoal.io/agent-not-ready"])
    assert result.exit_code == 2
    assert "not running in a Kubernetes Pod" in result.output
    assert "--kubeconfig" in result.output
