"""``--log-format json`` (or ``SHOAL_LOG_FORMAT=json``): one JSON object per log record."""

from __future__ import annotations

import json
from pathlib import Path

from shoal.demo.fleet import shoal_argv
from shoal.testing.procs import ManagedProcess, free_port, wait_until


def first_line(tmp_path: Path, env: dict[str, str], *flags: str) -> str:
    token = tmp_path / "token"
    token.write_text("t0ken")
    log = tmp_path / "scheduler.log"
    argv = shoal_argv(*flags, "scheduler", "--listen", f"127.0.0.1:{free_port()}", "--peer-token-file", str(token))
    proc = ManagedProcess(argv, stdout=log, env=env)
    try:
        wait_until(lambda: "listening on" in log.read_text(), what="scheduler log", process=proc)
    finally:
        proc.stop()
    return next(line for line in log.read_text().splitlines() if "listening on" in line)


class TestLogFormat:
    """JSON logs carry level, logger and message as fields; text stays the default."""

    def test_json_from_the_environment(self, tmp_path: Path) -> None:
        record = json.loads(first_line(tmp_path, {"SHOAL_LOG_FORMAT": "json"}))
        assert record["level"] == "INFO"
        assert record["name"] == "shoal.scheduler.server"
        assert "listening on http://127.0.0.1:" in record["message"]

    def test_text_by_default(self, tmp_path: Path) -> None:
        line = first_line(tmp_path, {"SHOAL_LOG_FORMAT": ""}, "--log-format", "text")
        assert " INFO shoal.scheduler.server: shoal scheduler " in line
