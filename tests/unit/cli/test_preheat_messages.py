"""``shoal preheat`` says why it cannot warm anything: the scheduler's refusal of the peer
token, a scheduler that is down, an agent's error body, each in words."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from shoal.cli.main import cli
from shoal.demo.fleet import LocalFleet


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    """A scheduler and one agent mirroring a registry that is down."""
    origin = f"http://127.0.0.1:{_closed_port()}"
    fleet = LocalFleet(tmp_path_factory.mktemp("fleet"), nodes=1, registries={"registry.down": origin}, tls=False)
    with fleet as running:  # the messages, not TLS, are under test here
        _wait_for_agent(running)
        yield running


def _wait_for_agent(fleet: LocalFleet) -> None:
    request = urllib.request.Request(
        f"{fleet.schedulers[0][0]}/v1/agents", headers={"Authorization": f"Bearer {fleet.token_file.read_text()}"}
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with urllib.request.urlopen(request, timeout=2) as resp:
            if json.loads(resp.read()).get("agents"):
                return
        time.sleep(0.1)
    raise AssertionError("the agent did not announce itself to the scheduler")


def _preheat(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["preheat", *args])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


class TestSchedulerAnswers:
    def test_missing_token_names_the_refusal_and_the_flag(self, fleet: LocalFleet) -> None:
        url = fleet.schedulers[0][0]
        code, output = _preheat("registry.down/team/app:v1", "--scheduler", url)
        assert code == 1
        assert f"the scheduler at {url} answered HTTP 401: peer token required" in output
        assert "pass --peer-token-file" in output
        assert "no agents found" not in output
        assert "ValueError" not in output

    def test_wrong_token_names_the_file(self, fleet: LocalFleet, tmp_path: Path) -> None:
        wrong = tmp_path / "token"
        wrong.write_text("not-the-token")
        url = fleet.schedulers[0][0]
        code, output = _preheat("registry.down/team/app:v1", "--scheduler", url, "--peer-token-file", str(wrong))
        assert code == 1
        assert "HTTP 401" in output
        assert f"--peer-token-file {wrong} does not hold the token" in output

    def test_scheduler_down(self) -> None:
        url = f"http://127.0.0.1:{_closed_port()}"
        code, output = _preheat("registry.down/team/app:v1", "--scheduler", url)
        assert code == 1
        assert f"cannot reach the scheduler at {url}: connection refused" in output
        assert "ClientConnectorError" not in output
        assert "ssl:default" not in output

    def test_json_failure_is_one_document(self) -> None:
        url = f"http://127.0.0.1:{_closed_port()}"
        result = CliRunner().invoke(cli, ["preheat", "registry.down/team/app:v1", "--scheduler", url, "--json"])
        assert result.exit_code == 1
        doc = json.loads(result.stdout)
        assert doc["ok"] is False
        assert f"cannot reach the scheduler at {url}" in doc["error"]


class TestAgentAnswers:
    def test_registry_error_body_reads_as_words(self, fleet: LocalFleet) -> None:
        code, output = _preheat(
            "registry.down/team/app:v1",
            "--scheduler",
            fleet.schedulers[0][0],
            "--peer-token-file",
            str(fleet.token_file),
            "--timeout",
            "60",
        )
        assert code == 1
        assert "FAILED" in output
        assert "manifest team/app:v1: HTTP 502" in output
        assert "b'" not in output
        assert '{"errors"' not in output
