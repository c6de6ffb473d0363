"""Values the chart cannot take stop ``shoal install`` with one line naming them (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from shoal.cli.install import install, upgrade
from shoal.ops.chart_values import brief_parameter_problems, helm_problems
from shoal.ops.helm import default_chart

BASE = "registries=registry.example.com"


def _install(*sets: str) -> Any:
    args = ["--dry-run"]
    for expression in sets:
        args += ["--set", expression]
    return CliRunner().invoke(install, args)


class TestUnknownValues:
    """A typo is refused by the schema, named as it was written on --set."""

    @pytest.mark.parametrize(
        ("expression", "named"),
        [
            ("registires=x", "registires"),
            ("webhook.replica=3", "webhook.replica"),
            ("scheduler.replicaCount=3", "scheduler.replicaCount"),
            ("image.tags=v1", "image.tags"),
            ("agent.swarm.maxParent=3", "agent.swarm.maxParent"),
        ],
    )
    def test_refused_and_named(self, expression: str, named: str) -> None:
        result = _install(f"{BASE},{expression}")
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1, result.output
        assert f"unknown value {named}:" in lines[0]
        assert "apiVersion" not in result.output

    def test_two_typos_are_both_named(self) -> None:
        result = _install(f"{BASE},registires=x,webhok.port=1")
        assert result.exit_code == 2
        assert "registires" in result.output
        assert "webhok" in result.output
        assert len(result.output.strip().splitlines()) <= 2

    def test_a_wrong_type_names_the_value(self) -> None:
        result = _install(f"{BASE},p2p.port=many")
        assert result.exit_code == 2
        assert result.output.strip() == "Error: invalid value p2p.port: got string, want integer"

    def test_every_default_is_allowed(self) -> None:
        result = _install(BASE)
        assert result.exit_code == 0, result.output

    def test_every_object_in_the_schema_is_closed(self) -> None:
        """Each object the schema describes key by key refuses keys it does not list."""
        schema = json.loads((default_chart() / "values.schema.json").read_text())
        defaults = yaml.safe_load((default_chart() / "values.yaml").read_text())
        open_objects: list[str] = []

        def walk(node: Any, where: str) -> None:
            if not isinstance(node, dict):
                return
            if "properties" in node and node.get("additionalProperties") is not False:
                open_objects.append(where or "(top level)")
            for key, child in (node.get("properties") or {}).items():
                walk(child, f"{where}.{key}".strip("."))
            for child in (node.get("definitions") or {}).values():
                walk(child, where)

        walk(schema, "")
        assert open_objects == []

        def keys(values: dict[str, Any], node: dict[str, Any], where: str) -> list[str]:
            missing = []
            for key, value in values.items():
                child = (node.get("properties") or {}).get(key)
                if child is None:
                    missing.append(f"{where}{key}")
                elif isinstance(value, dict) and "properties" in child:
                    missing += keys(value, child, f"{where}{key}.")
            return missing

        assert keys(defaults, schema, "") == []


class TestBriefParameters:
    """The brief's names that mean nothing here are refused with what to set instead."""

    @pytest.mark.parametrize(
        ("expression", "instead"),
        [
            ("region=cn-hangzhou", "registries=registry.example.com"),
            ("acrInstances=cri-xxx", "registries=registry.example.com"),
            ("pullImageInternet=true", "registries[0].url="),
            ("p2p.plusMode.ossInternetAccelerate=true", "registries[N].url"),
        ],
    )
    def test_refused_with_the_alternative(self, expression: str, instead: str) -> None:
        result = _install(f"{BASE},{expression}")
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1
        assert lines[0].startswith("Error: " + expression.split("=")[0])
        assert instead in lines[0]

    def test_the_brief_install_line(self) -> None:
        result = _install("region=cn-hangzhou,acrInstances=cri-xxx,pullImageInternet=true")
        assert result.exit_code == 2
        assert [line.split()[0] for line in result.output.strip().removeprefix("Error: ").splitlines()] == [
            "region",
            "acrInstances",
            "pullImageInternet",
        ]

    def test_refused_on_upgrade_too(self) -> None:
        result = CliRunner().invoke(upgrade, ["--dry-run", "--reset-values", "--set", f"{BASE},region=x"])
        assert result.exit_code == 2
        assert "region" in result.output

    def test_the_suggested_url_form_installs(self, tmp_path: Path) -> None:
        result = _install("registries[0].host=reg.example.com,registries[0].url=https://reg-public.example.com")
        assert result.exit_code == 0, result.output
        assert "reg.example.com=https://reg-public.example.com" in result.output

    def test_absent_means_no_problem(self) -> None:
        assert brief_parameter_problems({"registries": "a", "p2p": {"plusMode": {"cacheTTL": "1h"}}}) == []


class TestHelmMessages:
    """Helm's multi-line messages become one line per mistake."""

    def test_schema_lines(self) -> None:
        message = (
            "values don't meet the specifications of the schema(s) in the following chart(s):\n"
            "shoal:\n- at '': additional properties 'a', 'b' not allowed\n"
            "- at '/p2p/port': got string, want integer"
        )
        assert helm_problems(message) == [
            "unknown value a, b: not a setting of the chart (see its values.yaml)",
            "invalid value p2p.port: got string, want integer",
        ]

    def test_template_failure(self) -> None:
        message = "execution error at (shoal/templates/webhook.yaml:2:20): registries is required: set one"
        assert helm_problems(message) == ["registries is required: set one"]

    def test_anything_else_is_not_a_values_problem(self) -> None:
        assert helm_problems("Kubernetes cluster unreachable") == []
