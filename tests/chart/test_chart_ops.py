"""Operations parts of the chart: scheduler replicas, monitoring objects, the dashboard, log format."""

from __future__ import annotations

import json
from typing import Any

import yaml
from click.testing import CliRunner

from shoal.cli.install import install
from shoal.ops.helm import build_values, notes, render

from .test_chart_render import agent_container, docs, find, flag

Doc = dict[str, Any]


def dashboard(rendered: list[Doc]) -> dict[str, Any]:
    config_map = find(rendered, "ConfigMap", "-dashboard")
    board: dict[str, Any] = json.loads(config_map["data"]["shoal-rollout.json"])
    return board


class TestSchedulerReplicas:
    """Several scheduler replicas by default, each named in every agent's --scheduler list."""

    def test_default_two_replicas_all_known_to_the_agents(self) -> None:
        rendered = docs()
        statefulset = find(rendered, "StatefulSet", "-scheduler")
        assert statefulset["spec"]["replicas"] == 2
        headless = find(rendered, "Service", "-scheduler-headless")
        assert statefulset["spec"]["serviceName"] == headless["metadata"]["name"]
        assert headless["spec"]["clusterIP"] == "None"
        (urls,) = flag(agent_container(rendered)["args"], "--scheduler")
        assert urls.split(",") == [
            f"https://shoal-scheduler-{i}.shoal-scheduler-headless.shoal-system.svc:8002" for i in range(2)
        ]
        assert find(rendered, "PodDisruptionBudget", "-scheduler")["spec"]["maxUnavailable"] == 1

    def test_replica_count_follows_the_value(self) -> None:
        rendered = docs("scheduler.replicas=3", "scheduler.port=9000")
        assert find(rendered, "StatefulSet", "-scheduler")["spec"]["replicas"] == 3
        (urls,) = flag(agent_container(rendered)["args"], "--scheduler")
        assert [u.rsplit(".", 1)[-1] for u in urls.split(",")] == ["svc:9000"] * 3
        assert "shoal-scheduler-2.shoal-scheduler-headless" in urls

    def test_one_replica_has_no_disruption_budget(self) -> None:
        rendered = docs("scheduler.replicas=1")
        budgets = [d["metadata"]["name"] for d in rendered if d["kind"] == "PodDisruptionBudget"]
        assert budgets == ["shoal-webhook"]  # the webhook's own (issue 11), not the scheduler's


class TestMonitoring:
    """PodMonitor and ServiceMonitor on request; each scrapes every component's /metrics once."""

    def test_off_by_default(self) -> None:
        kinds = {d["kind"] for d in docs()}
        assert not kinds & {"PodMonitor", "ServiceMonitor"}

    def test_pod_monitor(self) -> None:
        monitor = find(
            docs("monitoring.podMonitor.enabled=true", "monitoring.podMonitor.labels.release=prom"), "PodMonitor"
        )
        assert monitor["metadata"]["labels"]["release"] == "prom"
        endpoints = monitor["spec"]["podMetricsEndpoints"]
        assert {(e["port"], e["scheme"]) for e in endpoints} == {("p2p", "http"), ("https", "https"), ("http", "http")}
        assert all(e["path"] == "/metrics" for e in endpoints)

    def test_service_monitor_keeps_one_service_per_component(self) -> None:
        rendered = docs("monitoring.serviceMonitor.enabled=true")
        monitor = find(rendered, "ServiceMonitor")
        keep = monitor["spec"]["endpoints"][0]["relabelings"][0]
        assert keep["action"] == "keep"
        assert keep["regex"] == "shoal-(agent|scheduler-headless|webhook)"
        agent_service = find(rendered, "Service", "-agent")
        assert agent_service["spec"]["ports"][0]["name"] == "p2p"

    def test_source_mode_does_not_scrape_a_scheduler(self) -> None:
        monitor = find(docs("monitoring.podMonitor.enabled=true", "p2p.plusMode.downloadPattern=source"), "PodMonitor")
        assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} == {"p2p", "https"}


class TestDashboard:
    """A Grafana dashboard ConfigMap with the sidecar label, showing a rollout."""

    def test_config_map_for_the_sidecar(self) -> None:
        rendered = docs()
        config_map = find(rendered, "ConfigMap", "-dashboard")
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        board = dashboard(rendered)
        titles = {p["title"] for p in board["panels"]}
        assert {"Origin bytes vs peer bytes", "Fallbacks to the origin, by reason", "Origin lease moves"} <= titles
        assert "Cache use, per node" in titles

    def test_namespace_and_disable(self) -> None:
        assert (
            find(docs("monitoring.dashboard.namespace=grafana"), "ConfigMap", "-dashboard")["metadata"]["namespace"]
            == "grafana"
        )
        assert not [d for d in docs("monitoring.dashboard.enabled=false") if d["kind"] == "ConfigMap"]


class TestLogFormat:
    def test_json_logs_reach_the_scheduler(self) -> None:
        container = find(docs("logFormat=json"), "StatefulSet", "-scheduler")["spec"]["template"]["spec"]["containers"][
            0
        ]
        assert {"name": "SHOAL_LOG_FORMAT", "value": "json"} in container["env"]


class TestNotes:
    """shoal install prints the chart's NOTES (as YAML comments after --dry-run's manifests)."""

    def test_dry_run_ends_with_the_notes(self) -> None:
        result = CliRunner().invoke(install, ["--dry-run", "--set", "registries=registry.example.com"])
        assert result.exit_code == 0, result.output
        head, _, tail = result.output.partition("# NOTES:\n")
        assert [d for d in yaml.safe_load_all(result.output) if d]  # still valid YAML as a whole
        assert yaml.safe_load_all(head)
        assert "# Shoal " in tail
        assert "shoal status" in tail
        assert "shoal preheat registry.example.com/team/app:v1" in tail
        assert all(line.startswith("#") for line in tail.splitlines())

    def test_notes_of_a_render(self) -> None:
        text = notes(render(build_values((), ("registries=registry.example.com", "scheduler.port=9000"))))
        assert "https://shoal-scheduler:9000" in text  # TLS by default; SHOAL_SCHEDULER_CA is set in the agent
        assert "ConfigMap shoal-dashboard" in text
