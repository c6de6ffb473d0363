"""``shoal status`` tells what is down by address and cause: no reprs, no class names."""

from __future__ import annotations

import json
import socket

from click.testing import CliRunner

from shoal.cli.main import cli


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_everything_down_is_told_in_words() -> None:
    agent, scheduler, webhook = (f"127.0.0.1:{_closed_port()}" for _ in range(3))
    args = ["status", "--agent", f"http://{agent}", "--scheduler", f"http://{scheduler}"]
    args += ["--webhook", f"https://{webhook}"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    out = result.output
    assert f"cannot reach the agent at http://{agent}: connection refused" in out
    assert f"cannot reach the scheduler at http://{scheduler}: connection refused" in out
    assert f"cannot reach the webhook at https://{webhook}: connection refused" in out
    for internal in ("SSLContext", "ClientConnectorError", "ssl:default", "object at 0x", "Traceback"):
        assert internal not in out


def test_json_is_one_document() -> None:
    result = CliRunner().invoke(cli, ["status", "--agent", f"http://127.0.0.1:{_closed_port()}", "--json"])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["ok"] is False
    assert doc["checks"][0]["name"] == "agent"
