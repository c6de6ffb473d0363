"""Failures in words: what the CLI tells a person when a call or a file went wrong.

Network and OS exceptions carry reprs (``ConnectionKey(...)``, ``<ssl.SSLContext ...>``,
``[Errno 111] Connect call failed``); a person needs the address and the cause, e.g.
"cannot reach the scheduler at https://127.0.0.1:1: connection refused". Every command maps
exceptions through :func:`describe` at its boundary.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import ssl

import aiohttp

from shoal.core.error_body import http_error

__all__ = ["HttpStatusError", "describe", "describe_call"]


class HttpStatusError(Exception):
    """A service answered with an error status; the message is the body's own words."""

    def __init__(self, status: int, body: bytes | str) -> None:
        super().__init__(http_error(status, body))
        self.status = status


_BIND = re.compile(r"bind on address \('?\[?([^',\]]*)\]?'?, (\d+)")
"""asyncio's message for a listening socket it could not bind: the address is in a tuple repr"""


def _os_cause(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({(exc.strerror or 'unknown host').lower()})"
    code = exc.errno
    if isinstance(code, int) and code > 0 and code in errno.errorcode:
        return os.strerror(code).lower()
    if exc.strerror:
        return exc.strerror.lower()
    return str(exc) or "operating system error"


def _ssl_cause(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its TLS certificate is not trusted ({exc.verify_message or exc.reason})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({(exc.reason or exc.strerror or 'unknown reason').lower().replace('_', ' ')})"
    if isinstance(exc, ssl.CertificateError):
        return f"its TLS certificate does not match ({exc})"
    return "TLS handshake failed"


def _connector(exc: aiohttp.ClientConnectorError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return _ssl_cause(exc.certificate_error)
    if isinstance(exc, aiohttp.ClientSSLError):
        return _ssl_cause(exc.os_error)
    return _os_cause(exc.os_error)


def _cause(exc: BaseException) -> str:
    """The cause alone, without the address (the caller names that)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _connector(exc)
    if isinstance(exc, TimeoutError):
        return "no answer in time (timed out)"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the connection was closed before an answer"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status}" + (f": {exc.message}" if exc.message else "")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer broke off"
    if isinstance(exc, aiohttp.InvalidURL):
        return f"not a URL: {exc.url}"
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return _ssl_cause(exc)
    if isinstance(exc, OSError):
        return _os_cause(exc)
    if isinstance(exc, json.JSONDecodeError):
        return f"the answer is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    return str(exc) or "unexpected error"


def describe(exc: BaseException) -> str:
    """One line for a person: the address (when the exception knows it) and the cause."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot reach {exc.host}:{exc.port}: {_connector(exc)}"
    bind = _BIND.search(exc.strerror or "") if isinstance(exc, OSError) else None
    if isinstance(exc, OSError) and bind is not None:
        host, port = bind.groups()
        return f"cannot listen on {f'[{host}]' if ':' in host else host}:{port}: {_os_cause(exc)}"
    if isinstance(exc, OSError) and exc.filename and not isinstance(exc, aiohttp.ClientError):
        return f"{exc.filename}: {_os_cause(exc)}"
    return _cause(exc)


def describe_call(exc: BaseException, what: str, url: str) -> str:
    """``cannot reach the scheduler at URL: connection refused`` or ``the scheduler at URL
    answered HTTP 401: peer token required``: ``what`` names the service for a person."""
    if isinstance(exc, aiohttp.ClientConnectorError | TimeoutError | aiohttp.ServerDisconnectedError):
        return f"cannot reach {what} at {url}: {_cause(exc)}"
    if isinstance(exc, HttpStatusError):
        return f"{what} at {url} answered {exc}"
    return f"{what} at {url}: {_cause(exc)}"
