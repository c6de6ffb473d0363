"""Failures told in words: the address and the cause, no reprs or class names."""

from __future__ import annotations

import socket
import ssl

import aiohttp
import pytest

from shoal.ops.failures import HttpStatusError, describe, describe_call


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _connect_error(url: str, **kw: object) -> aiohttp.ClientError:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError) as info:
            async with session.get(url, **kw):  # type: ignore[arg-type]
                pass
    return info.value


class TestConnectionRefused:
    """A service that is down: named with its address, cause "connection refused"."""

    async def test_plain(self) -> None:
        port = _closed_port()
        exc = await _connect_error(f"http://127.0.0.1:{port}/")
        assert describe(exc) == f"cannot reach 127.0.0.1:{port}: connection refused"
        assert describe_call(exc, "the scheduler", f"http://127.0.0.1:{port}") == (
            f"cannot reach the scheduler at http://127.0.0.1:{port}: connection refused"
        )

    async def test_tls_context_is_not_shown(self) -> None:
        port = _closed_port()
        context = ssl.create_default_context()
        exc = await _connect_error(f"https://127.0.0.1:{port}/", ssl=context)
        text = describe_call(exc, "the webhook", f"https://127.0.0.1:{port}")
        assert text == f"cannot reach the webhook at https://127.0.0.1:{port}: connection refused"


class TestOther:
    def test_http_status_uses_the_body(self) -> None:
        exc = HttpStatusError(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"peer token required"}]}')
        assert describe_call(exc, "the scheduler", "http://s:8002") == (
            "the scheduler at http://s:8002 answered HTTP 401: UNAUTHORIZED: peer token required"
        )

    def test_timeout(self) -> None:
        assert describe_call(TimeoutError(), "the agent", "http://a:1") == (
            "cannot reach the agent at http://a:1: no answer in time (timed out)"
        )

    def test_file_error_names_the_file(self) -> None:
        assert describe(PermissionError(13, "Permission denied", "/x")) == "/x: permission denied"

    def test_unresolvable_host(self) -> None:
        assert "cannot resolve the host name" in describe(socket.gaierror(-2, "Name or service not known"))
