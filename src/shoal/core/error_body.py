"""The words in an HTTP error body, for a person: OCI ``{"errors": [...]}``, other JSON, or text.

Registries, the agent and the scheduler answer errors with a JSON body or a line of text;
what a person should read is its message, never ``b'{"errors": ...}'``.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_CHARS", "error_message", "http_error"]

MAX_CHARS = 300


def _json_message(doc: Any) -> str | None:
    if not isinstance(doc, dict):
        return None
    errors = doc.get("errors")
    if isinstance(errors, list) and errors:
        parts = []
        for entry in errors:
            if not isinstance(entry, dict):
                continue
            code, message = entry.get("code"), entry.get("message")
            text = ": ".join(str(p) for p in (code, message) if p)
            if text:
                parts.append(text)
        if parts:
            return "; ".join(parts)
    for key in ("message", "error", "detail", "reason"):
        value = doc.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _printable(text: str) -> str:
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def error_message(body: bytes | str) -> str:
    """The message of an error body, on one line, at most :data:`MAX_CHARS` characters; ``""``
    for an empty body."""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    try:
        found = _json_message(json.loads(text))
    except ValueError:
        found = None
    message = _printable(found if found is not None else text)
    return message if len(message) <= MAX_CHARS else message[: MAX_CHARS - 3] + "..."


def http_error(status: int, body: bytes | str) -> str:
    """``HTTP 401: UNAUTHORIZED: authentication required``; the status alone for an empty body."""
    message = error_message(body)
    return f"HTTP {status}: {message}" if message else f"HTTP {status}"
