"""``shoal status`` where the install notes run it: ``kubectl exec ds/<release>-agent -- shoal
status --host-root /host``. The Pod is the chart's own rendered DaemonSet: its node-config
init container writes the node's files, its agent container's hostPath mounts are laid out
(as symlinks) under a fake container root, and status runs with that container's env.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from shoal.cli.main import cli
from shoal.demo.fleet import shoal_argv, wait_healthy
from shoal.demo.procs import ManagedProcess, free_port
from shoal.ops.helm import build_values, manifest_documents, notes, render
from shoal.testing.pki import TestCA

REGISTRY = "registry.example.com"
Doc = dict[str, Any]


def _daemonset(*sets: str) -> Doc:
    rendered = render(build_values((), (f"registries={REGISTRY}", *sets)))
    (found,) = [
        d for d in manifest_documents(rendered) if d["kind"] == "DaemonSet" and d["metadata"]["name"].endswith("-agent")
    ]
    return found


@dataclass
class Pod:
    """The rendered agent Pod laid out on this machine."""

    node_root: Path
    container_root: Path
    env: dict[str, str]


def _replace_flag(args: list[str], name: str, value: str) -> list[str]:
    out = list(args)
    out[out.index(name) + 1] = value
    return out


def lay_out(spec: Doc, tmp_path: Path, agent_port: int, *, mounts: bool = True) -> Pod:
    """Run the chart's node-config on a fake node root, then mount the agent container's
    hostPath volumes (symlinks) under a fake container root."""
    pod = spec["spec"]["template"]["spec"]
    node_root, container_root = tmp_path / "node", tmp_path / "container"
    (node_root / "etc/containerd").mkdir(parents=True)
    (node_root / "etc/containerd/config.toml").write_text(
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\nconfig_path = "/etc/containerd/certs.d"\n'
    )
    (node_config,) = [c for c in pod["initContainers"] if c["name"] == "node-config"]
    args = _replace_flag(node_config["args"], "--host-root", str(node_root))
    args = _replace_flag(args, "--agent", f"127.0.0.1:{agent_port}")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output

    volumes = {v["name"]: v for v in pod["volumes"]}
    (agent,) = [c for c in pod["containers"] if c["name"] == "agent"]
    for mount in sorted(agent["volumeMounts"], key=lambda m: len(m["mountPath"])) if mounts else []:
        host_path = volumes[mount["name"]].get("hostPath")
        if host_path is None:
            continue
        assert mount.get("readOnly") is True, f"{mount['name']}: the agent mounts the node's files read-only"
        inside = container_root / mount["mountPath"].lstrip("/")
        target = node_root / host_path["path"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)  # type: DirectoryOrCreate
        if inside.exists():  # nested in a mount already laid out: it must be the same place
            assert inside.resolve() == target.resolve(), mount
            continue
        inside.parent.mkdir(parents=True, exist_ok=True)
        inside.symlink_to(target)
    env = {e["name"]: e["value"] for e in agent["env"] if "value" in e}
    if "SHOAL_HOST_ROOT" in env:
        env["SHOAL_HOST_ROOT"] = str(container_root / env["SHOAL_HOST_ROOT"].lstrip("/"))
    if "SHOAL_SCHEDULER_CA" in env:  # the CA Secret's mount: a CA certificate at that path
        ca_file = container_root / env["SHOAL_SCHEDULER_CA"].lstrip("/")
        ca_file.parent.mkdir(parents=True, exist_ok=True)
        ca_file.write_bytes(TestCA.create().pem)
        env["SHOAL_SCHEDULER_CA"] = str(ca_file)
    return Pod(node_root, container_root, env)


@pytest.fixture(scope="module")
def agent_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real agent (no swarm) mirroring the registry, as the runtime reaches it."""
    work = tmp_path_factory.mktemp("agent")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = shoal_argv(
        "agent",
        "--listen",
        f"127.0.0.1:{port}",
        "--registry",
        REGISTRY,
        "--cache-dir",
        str(work / "cache"),
        "--download-pattern",
        "source",
        "--insecure-no-peer-auth",
    )
    process = ManagedProcess(argv, stdout=work / "agent.log")
    try:
        wait_healthy(url, process)
        yield url
    finally:
        process.stop(timeout=5)


def _status(pod: Pod, agent_url: str, *extra: str) -> tuple[int, str]:
    env = {**pod.env, "KUBERNETES_SERVICE_HOST": "10.96.0.1"}
    result = CliRunner().invoke(cli, ["status", "--agent", agent_url, *extra], env=env)
    return result.exit_code, result.output


def _line(output: str, check: str) -> str:
    (line,) = [ln for ln in output.splitlines() if ln[6:].startswith(check + " ")]
    return line


class TestInTheAgentPod:
    """The chart's agent container sees the node's runtime files, and status reads them."""

    def test_healthy_node_is_healthy(self, tmp_path: Path, agent_url: str) -> None:
        pod = lay_out(_daemonset(), tmp_path, int(agent_url.rsplit(":", 1)[1]))
        code, output = _status(pod, agent_url, "--host-root", pod.env["SHOAL_HOST_ROOT"])
        assert code == 0, output
        assert _line(output, "runtime-config").startswith("ok")
        port = agent_url.rsplit(":", 1)[1]
        # the files by the node's paths (rewrite mode: the webhook's alias host), not the container's
        assert f"registry.example.com: /etc/containerd/certs.d/registry.example.com:{port}/hosts.toml" in output
        assert "registry.example.com: /etc/containers/registries.conf.d/shoal.conf" in output
        assert str(tmp_path) not in output
        assert _line(output, "containerd-config").startswith("ok")
        assert output.rstrip().endswith("acceleration works")

    def test_the_containers_env_alone_is_enough(self, tmp_path: Path, agent_url: str) -> None:
        pod = lay_out(_daemonset(), tmp_path, int(agent_url.rsplit(":", 1)[1]))
        code, output = _status(pod, agent_url)
        assert code == 0, output

    def test_crio_drop_in_is_seen_too(self, tmp_path: Path, agent_url: str) -> None:
        pod = lay_out(_daemonset("nodeConfig.containerdCertsDir="), tmp_path, int(agent_url.rsplit(":", 1)[1]))
        code, output = _status(pod, agent_url)
        assert code == 0, output
        assert "/etc/containers/registries.conf.d/shoal.conf" in _line(output, "runtime-config") + output
        assert _line(output, "containerd-config").startswith("--")

    def test_without_the_mounts_status_says_where_to_look(self, tmp_path: Path, agent_url: str) -> None:
        """The old chart: nothing mounted; status fails and points at --host-root."""
        pod = lay_out(_daemonset(), tmp_path, int(agent_url.rsplit(":", 1)[1]), mounts=False)
        code, output = _status(pod, agent_url, "--host-root", "/", "--containerd-config", str(tmp_path / "none"))
        assert code == 1
        assert _line(output, "runtime-config").startswith("FAIL")
        code, output = _status(Pod(pod.node_root, pod.container_root, {}), agent_url)
        assert code == 1
        assert "pass --host-root" in output


def test_the_install_notes_pass_host_root() -> None:
    text = notes(render(build_values((), (f"registries={REGISTRY}",))))
    (command,) = [ln for ln in text.splitlines() if "shoal status" in ln and "exec" in ln]
    assert "--host-root /host" in command
