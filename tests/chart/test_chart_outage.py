"""The chart's registry-outage settings reach the agent: grace, timeout, containerd's store."""

from __future__ import annotations

from .test_chart_render import agent_container, docs, flag


class TestOutageValues:
    """agent.outageGrace, agent.registryTimeout and agent.containerdContentDir as flags and mounts."""

    def test_defaults(self) -> None:
        documents = docs()
        container = agent_container(documents)
        assert flag(container["args"], "--outage-grace") == ["24h"]
        assert flag(container["args"], "--registry-timeout") == ["5s"]
        assert flag(container["args"], "--containerd-content-dir") == ["/var/lib/shoal-containerd-content"]
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["containerd-content"]["readOnly"] is True
        daemonset = next(d for d in documents if d["kind"] == "DaemonSet" and d["metadata"]["name"].endswith("-agent"))
        volumes = {v["name"]: v for v in daemonset["spec"]["template"]["spec"]["volumes"]}
        assert volumes["containerd-content"]["hostPath"]["path"] == (
            "/var/lib/containerd/io.containerd.content.v1.content"
        )

    def test_off(self) -> None:
        container = agent_container(docs("agent.containerdContentDir=", "agent.outageGrace=0"))
        assert flag(container["args"], "--outage-grace") == ["0"]
        assert "--containerd-content-dir" not in container["args"]
        assert "containerd-content" not in {m["name"] for m in container["volumeMounts"]}
