"""A small proxy in front of a real docker-registry, for what the registry itself won't do.

docker-registry's htpasswd auth is all or nothing; a real registry (Harbor, GHCR, ECR) has
public and private repositories side by side. ``Gateway`` forwards every request to the real
registry and, per its ``Rules``: asks for Basic credentials on private repositories, flips
one byte of blob bodies at a given offset (a bad disk or a lying cache in the registry's
path), or trickles blob bodies. Every request it forwards is counted by (method, kind).
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

_NAME = re.compile(r"^/v2/(?P<repo>.+?)/(?P<kind>blobs|manifests|tags)/")


@dataclass
class Rules:
    private: dict[str, tuple[str, str]] = field(default_factory=dict)
    """repository -> the (user, password) that may read it; everyone may read the rest"""
    corrupt_at: int | None = None
    """flip the byte at this blob offset in bodies that cover it"""
    corrupt_times: int = 1_000_000
    """how many blob GETs get the flipped byte"""
    chunk_delay: float = 0.0
    """seconds between 64 KiB chunks of a blob body"""


class Gateway:
    def __init__(self, upstream: str, rules: Rules | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.rules = rules or Rules()
        self.counts: Counter[tuple[str, str]] = Counter()
        """(method, blobs|manifests|tags|other) -> requests forwarded"""
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Gateway:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _allowed(self, request: web.Request, repo: str) -> bool:
        creds = self.rules.private.get(repo)
        if creds is None:
            return True
        expected = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
        return request.headers.get("Authorization") == expected

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        match = _NAME.match(request.path)
        kind = match["kind"] if match else "other"
        if match and not self._allowed(request, match["repo"]):
            return web.Response(
                status=401,
                headers={"WWW-Authenticate": 'Basic realm="gateway"'},
                content_type="application/json",
                text='{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
            )
        self.counts[(request.method, kind)] += 1
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in ("host", "authorization"))
        async with self._session.request(
            request.method, f"{self.upstream}{request.path_qs}", headers=headers, allow_redirects=False
        ) as upstream:
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
            response = web.StreamResponse(status=upstream.status, headers=out)
            await response.prepare(request)
            if request.method == "HEAD":
                return response
            corrupt = kind == "blobs" and self.rules.corrupt_at is not None and self.rules.corrupt_times > 0
            if corrupt:
                self.rules.corrupt_times -= 1
            offset = _first_offset(upstream)
            async for chunk in upstream.content.iter_chunked(64 << 10):
                if (
                    corrupt
                    and self.rules.corrupt_at is not None
                    and offset <= self.rules.corrupt_at < offset + len(chunk)
                ):
                    at = self.rules.corrupt_at - offset
                    chunk = chunk[:at] + bytes([chunk[at] ^ 0xFF]) + chunk[at + 1 :]
                offset += len(chunk)
                if kind == "blobs" and self.rules.chunk_delay:
                    await asyncio.sleep(self.rules.chunk_delay)
                await response.write(chunk)
            await response.write_eof()
            return response


def _first_offset(resp: aiohttp.ClientResponse) -> int:
    content_range = resp.headers.get("Content-Range", "")
    match = re.match(r"bytes (\d+)-", content_range)
    return int(match[1]) if match else 0
