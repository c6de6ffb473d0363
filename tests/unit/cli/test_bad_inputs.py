"""One table of bad inputs across every ``shoal`` subcommand: each mistake is named with what
is expected (exit 2), each failure says what failed and why (exit 1), never with a
traceback, an exception class name or a repr; ``--json`` gives one JSON document even then.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from shoal.cli.main import COMMANDS, cli

USAGE, FAILURE = 2, 1
INTERNALS = re.compile(
    r"Traceback|\b[A-Z][A-Za-z]*(Error|Exception)\b|object at 0x|\bb'|\bb\"|\[Errno|"
    r"<[a-z_]+(\.[a-z_]+)+\.[A-Za-z]+[ >]|ConnectionKey|ssl:default"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CLOSED = _free_port()
"""a port nothing listens on (bound and released a moment ago)"""


@pytest.fixture(scope="module")
def held() -> Iterator[int]:
    """A port something listens on: a server started there cannot bind it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    exit_status: int
    named: str
    """the offending value (or address) the message must name"""
    json: bool = False
    """the command takes --json: run again with it and parse stdout"""

    @property
    def id(self) -> str:
        return " ".join(self.args)[:60]


HELD = "{held}"
CASES = [
    # agent
    Case(("agent", "--registry", "r.example.com", "--cache-ttl", "5x"), USAGE, "5x"),
    Case(("agent", "--registry", "r.example.com=ftp://r.example.com"), USAGE, "ftp://r.example.com"),
    Case(("agent", "--registry", "r.example.com", "--download-pattern", "torrent"), USAGE, "torrent"),
    Case(
        ("agent", "--registry", "r.example.com", "--peer-token-file", "/nonexistent/token"), USAGE, "/nonexistent/token"
    ),
    Case(
        (
            "agent",
            "--registry",
            "r.example.com",
            "--download-pattern",
            "source",
            "--insecure-no-peer-auth",
            "--listen",
            f"127.0.0.1:{HELD}",
        ),
        FAILURE,
        f"cannot listen on 127.0.0.1:{HELD}: address already in use",
    ),
    # scheduler
    Case(("scheduler", "--parent-policy", "fastest"), USAGE, "fastest"),
    Case(("scheduler", "--listen", "bogus", "--insecure-no-peer-auth"), USAGE, "bogus"),
    Case(("scheduler", "--peer-token-file", "/nonexistent/token"), USAGE, "/nonexistent/token: no such file"),
    Case(
        ("scheduler", "--listen", f"127.0.0.1:{HELD}", "--insecure-no-peer-auth"),
        FAILURE,
        f"cannot listen on 127.0.0.1:{HELD}: address already in use",
    ),
    # webhook
    Case(("webhook", "--listen", "nohost", "--registry", "r.example.com", "--insecure"), USAGE, "nohost"),
    Case(("webhook", "--registry", "bad host", "--insecure"), USAGE, "bad host"),
    Case(("webhook", "--registry", "r.example.com", "--p2p-port", "99999", "--insecure"), USAGE, "99999"),
    Case(("webhook", "--registry", "r.example.com"), USAGE, "--tls-cert"),
    Case(("webhook", "--registry", "r.example.com", "--insecure"), USAGE, "--kubeconfig"),
    # node-config
    Case(("node-config", "--agent", "nope", "--registry", "r.example.com", "--dry-run"), USAGE, "nope"),
    Case(("node-config", "--mode", "sideways", "--registry", "r.example.com"), USAGE, "sideways"),
    Case(("node-config", "--registry", "r.example.com=https://r.example.com\nx", "--dry-run"), USAGE, "\\nx"),
    Case(("node-config", "--dry-run"), USAGE, "--registry"),
    Case(
        (
            "node-config",
            "--registry",
            "r.example.com",
            "--containerd-certs-dir",
            "/dev/null/certs.d",
            "--registries-conf-dir",
            "",
        ),
        FAILURE,
        "/dev/null/certs.d/r.example.com: not a directory",
    ),
    # node-ready
    Case(("node-ready", "--taint", "x/y", "--node", "n1", "--interval", "0.001"), USAGE, "0.001"),
    Case(("node-ready", "--taint", "x/y"), USAGE, "--node"),
    Case(("node-ready", "--taint", "x/y", "--node", "n1", "--kubeconfig", "/nonexistent/kc"), USAGE, "/nonexistent/kc"),
    # preheat
    Case(("preheat", "NOT A REF", "--scheduler", f"http://127.0.0.1:{CLOSED}"), USAGE, "NOT A REF", json=True),
    Case(("preheat", "r.example.com/a/b:c", "--scheduler", "not-a-url"), USAGE, "not-a-url", json=True),
    Case(
        ("preheat", "r.example.com/a/b:c", "--scheduler", f"http://127.0.0.1:{CLOSED}", "--creds", "nocolon"),
        USAGE,
        "--creds",
        json=True,
    ),
    Case(
        ("preheat", "r.example.com/a/b:c", "--scheduler", f"http://127.0.0.1:{CLOSED}", "--timeout", "0"),
        USAGE,
        "--timeout",
        json=True,
    ),
    Case(
        ("preheat", "r.example.com/a/b:c", "--scheduler", f"http://127.0.0.1:{CLOSED}"),
        FAILURE,
        f"cannot reach the scheduler at http://127.0.0.1:{CLOSED}: connection refused",
        json=True,
    ),
    # status
    Case(("status", "--agent", "not-a-url"), USAGE, "not-a-url", json=True),
    Case(("status", "--host-root", "/nonexistent/root"), USAGE, "/nonexistent/root", json=True),
    Case(("status", "--host-root", "/", "--containerd-config", "etc/config.toml"), USAGE, "etc/config.toml", json=True),
    Case(
        ("status", "--agent", f"http://127.0.0.1:{CLOSED}", "--containerd-certs-dir", ""),
        FAILURE,
        f"cannot reach the agent at http://127.0.0.1:{CLOSED}: connection refused",
        json=True,
    ),
    # demo
    Case(("demo", "--size", "10X"), USAGE, "10X"),
    Case(("demo", "--origin-rate", "fast"), USAGE, "fast"),
    Case(("demo", "--nodes", "0"), USAGE, "--nodes"),
    Case(("demo", "--origin", "ftp://r.example.com", "--image", "a/b:c"), USAGE, "ftp://r.example.com"),
    Case(("demo", "--origin", "http://127.0.0.1:5000"), USAGE, "--image"),
    # install / upgrade / uninstall (their values are another change's; simple bad values here)
    Case(("install", "--dry-run", "--timeout", "abc"), USAGE, "abc"),
    Case(("install", "--dry-run", "--values", "/nonexistent/values.yaml"), USAGE, "/nonexistent/values.yaml"),
    Case(("install", "--dry-run", "--chart", "/nonexistent/chart"), USAGE, "/nonexistent/chart"),
    Case(("upgrade", "--dry-run", "--timeout", "soon"), USAGE, "soon"),
    Case(("upgrade", "--dry-run", "--reset-values", "--bogus-flag"), USAGE, "--bogus-flag"),
    Case(("uninstall", "--timeout", "x"), USAGE, "'x'"),
    Case(("uninstall", "--kubeconfig", "/nonexistent/kc"), FAILURE, "/nonexistent/kc"),
    # the command itself
    Case(("bogus",), USAGE, "bogus"),
    Case(("--log-level", "loud", "status"), USAGE, "loud"),
]


def test_every_subcommand_is_in_the_table() -> None:
    assert {c.args[0] for c in CASES} >= set(COMMANDS)


def _invoke(args: tuple[str, ...], held: int, tmp_path: Path) -> Result:
    argv = [a.replace(HELD, str(held)) for a in args]
    env = {
        "KUBERNETES_SERVICE_HOST": None,
        "KUBECONFIG": str(tmp_path / "no-kubeconfig"),
        "HOME": str(tmp_path),
        "NODE_NAME": None,
        "SHOAL_SCHEDULER": None,
        "SHOAL_AGENT": None,
        "SHOAL_HOST_ROOT": None,
    }
    if "--cache-dir" not in argv and argv[0] == "agent":
        argv += ["--cache-dir", str(tmp_path / "cache")]
    return CliRunner().invoke(cli, argv, env=env)


@pytest.fixture
def no_default_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes.config import kube_config

    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "no-kubeconfig"))


@pytest.mark.usefixtures("no_default_kubeconfig")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, held: int, tmp_path: Path) -> None:
    result = _invoke(case.args, held, tmp_path)
    output = result.output
    assert result.exit_code == case.exit_status, output
    assert not isinstance(result.exception, AssertionError | TypeError | AttributeError), output
    found = INTERNALS.search(output)
    assert found is None, f"internals {found.group(0)!r} in: {output}"
    assert case.named.replace(HELD, str(held)) in output, output
    error_lines = [ln for ln in output.splitlines() if ln.startswith("Error:")]
    assert len(error_lines) <= 1, output  # status reports its failing checks instead
    if case.json:
        with_json = _invoke((*case.args, "--json"), held, tmp_path)
        assert with_json.exit_code == case.exit_status
        doc = json.loads(with_json.stdout)
        assert doc["ok"] is False
        assert doc.get("exit_status", case.exit_status) == case.exit_status
        assert case.named.replace(HELD, str(held)) in json.dumps(doc, ensure_ascii=False)
