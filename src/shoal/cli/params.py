"""Click parameter types for Shoal's value syntaxes: a bad value is a usage error naming it."""

from __future__ import annotations

from urllib.parse import urlsplit

import click

from shoal.core.units import UnitError, parse_size

__all__ = ["SIZE", "URL", "ByteSize", "HttpUrl"]


class ByteSize(click.ParamType[int]):
    """``256M``, ``1G``, ``1.5Gi``, ``4096``: bytes, powers of 1024."""

    name = "size"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except UnitError:
            self.fail(f"{value!r}: want a number of bytes with an optional K, M, G or T suffix (e.g. 256M)", param, ctx)


class HttpUrl(click.ParamType[str]):
    """An ``http://`` or ``https://`` URL with a host, without trailing slash."""

    name = "url"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 -- raises ValueError for a port out of range
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
            self.fail(f"{value!r}: want an http:// or https:// URL such as http://127.0.0.1:5000", param, ctx)
        if any(not c.isprintable() or c.isspace() for c in text):
            self.fail(f"{value!r}: a URL has no spaces or control characters", param, ctx)
        return text.rstrip("/")


SIZE = ByteSize()
URL = HttpUrl()
