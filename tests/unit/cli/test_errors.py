"""The CLI's boundary: failures in words, exit 2 for usage and 1 for failures, --json on failure."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from shoal.cli import main
from shoal.cli.errors import clean_help, short_help


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--count", type=int, default=1)
def boom(as_json: bool, count: int) -> None:
    """Fail the way a command's dependency fails: an OSError with a file name."""
    raise FileNotFoundError(2, "No such file or directory", "/etc/shoal/missing")


@pytest.fixture(autouse=True)
def _boom_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(main.COMMANDS, "boom", f"{__name__}:boom")


class TestBoundary:
    """An exception no command handled becomes one line, exit 1; --debug shows the traceback."""

    def test_unhandled_exception_is_one_line(self) -> None:
        result = CliRunner().invoke(main.cli, ["boom"])
        assert result.exit_code == 1
        assert result.output.strip() == "Error: /etc/shoal/missing: no such file or directory"
        assert "Traceback" not in result.output
        assert "FileNotFoundError" not in result.output

    def test_debug_shows_the_exception(self) -> None:
        result = CliRunner().invoke(main.cli, ["--debug", "boom"])
        assert isinstance(result.exception, FileNotFoundError)

    def test_json_failure_is_one_document(self) -> None:
        result = CliRunner().invoke(main.cli, ["boom", "--json"])
        assert result.exit_code == 1
        doc = json.loads(result.stdout)
        assert doc == {"ok": False, "error": "/etc/shoal/missing: no such file or directory", "exit_status": 1}

    def test_json_usage_error_is_one_document_exit_2(self) -> None:
        result = CliRunner().invoke(main.cli, ["boom", "--json", "--count", "many"])
        assert result.exit_code == 2
        doc = json.loads(result.stdout)
        assert doc["ok"] is False
        assert doc["exit_status"] == 2
        assert "'many'" in doc["error"]


class TestHelpText:
    """Help reads as prose: no reStructuredText literals, a short first line per command."""

    def test_literals_become_quotes(self) -> None:
        assert (
            clean_help("like ``onectl addon install``, e.g. ``--set a=b``")
            == "like 'onectl addon install', e.g. '--set a=b'"
        )

    def test_short_help_is_the_first_sentence_without_examples(self) -> None:
        text = "Install Shoal (like 'onectl addon install'), e.g. '--set registries=r.example.com'.\n\nMore."
        assert short_help(text) == "Install Shoal (like 'onectl addon install')"

    def test_top_level_help_has_no_markup(self) -> None:
        result = CliRunner().invoke(main.cli, ["--help"])
        assert result.exit_code == 0
        assert "``" not in result.output
        for name in main.COMMANDS:
            if name != "boom":
                assert "``" not in CliRunner().invoke(main.cli, [name, "--help"]).output, name


@click.command()
def bug() -> None:
    """Fail the way a mistake in Shoal fails."""
    raise KeyError("digest")


class TestBugs:
    """A mistake in Shoal itself is called that, with how to report it."""

    def test_bug_is_reported_as_such(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(main.COMMANDS, "bug", f"{__name__}:bug")
        result = CliRunner().invoke(main.cli, ["bug"])
        assert result.exit_code == 1
        assert "unexpected failure ('digest'): please report it" in result.output
        assert "KeyError" not in result.output
