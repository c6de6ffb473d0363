"""One rule for what every command tells a person when something goes wrong.

A mistake in the command line is a usage error (exit status 2); anything else that fails is
a failure (exit status 1) told in words by :func:`shoal.ops.failures.describe`: the address
and the cause, never a traceback, a repr or an exception class name (``shoal --debug`` shows
the traceback). A command given ``--json`` prints one JSON document on stdout even when it
fails: ``{"ok": false, "error": "...", "exit_status": N}``.
"""

from __future__ import annotations

import json
import logging
import re

import click

log = logging.getLogger(__name__)

__all__ = ["as_failure", "clean_help", "json_failure", "short_help"]


BUGS = (LookupError, TypeError, AttributeError, AssertionError, ArithmeticError, NameError)
"""exceptions that mean a mistake in Shoal, not in its input or surroundings"""


def as_failure(exc: Exception) -> click.ClickException:
    """An exception no command handled, as the failure a person reads (the traceback goes to
    the debug log: ``shoal --log-level debug`` or ``shoal --debug``)."""
    from shoal.ops.failures import describe

    log.debug("failure", exc_info=exc)
    if isinstance(exc, BUGS):
        return click.ClickException(
            f"unexpected failure ({describe(exc)}): please report it with the output of 'shoal --debug ...'"
        )
    return click.ClickException(describe(exc))


def json_failure(exc: click.ClickException) -> str:
    """The ``--json`` document for a command that failed with ``exc``."""
    return json.dumps({"ok": False, "error": exc.format_message(), "exit_status": exc.exit_code}, indent=2)


SHORT_HELP = 72
"""characters of a command's line in ``shoal --help`` before it is cut at a semicolon"""
_LITERAL = re.compile(r"``([^`]+)``")


def clean_help(text: str | None) -> str | None:
    """Help text without reStructuredText markup: ````--set x=y```` reads as ``'--set x=y'``."""
    return _LITERAL.sub(r"'\1'", text) if text else text


def short_help(text: str) -> str:
    """The command list's one line: the first sentence, without its examples."""
    first = " ".join(text.strip().split("\n\n", 1)[0].split())
    first = re.sub(r",? e\.g\..*$", "", first)
    first = re.split(r"(?<=[a-z0-9)'])\.\s", first + " ", maxsplit=1)[0].rstrip(". ")
    return first.split("; ", 1)[0] if len(first) > SHORT_HELP else first
