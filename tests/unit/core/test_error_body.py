"""Error bodies read as their message: OCI errors, other JSON, text; never bytes reprs."""

from __future__ import annotations

import pytest

from shoal.core.error_body import MAX_CHARS, error_message, http_error


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}',
            "UNAUTHORIZED: authentication required",
        ),
        (
            b'{"errors":[{"code":"DENIED"},{"code":"NAME_UNKNOWN","message":"no repo"}]}',
            "DENIED; NAME_UNKNOWN: no repo",
        ),
        (b'{"error": "peer token required"}', "peer token required"),
        (b"peer token required\n", "peer token required"),
        (b"line one\r\nline\ttwo\x00", "line one line two"),
        (b"\xff\xfe", "\ufffd\ufffd"),
        (b"", ""),
        ("text already", "text already"),
    ],
)
def test_message(body: bytes | str, message: str) -> None:
    assert error_message(body) == message


def test_long_bodies_are_cut() -> None:
    assert len(error_message(b"x" * 5000)) == MAX_CHARS


def test_http_error() -> None:
    assert http_error(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"no"}]}') == "HTTP 401: UNAUTHORIZED: no"
    assert http_error(502, b"") == "HTTP 502"
