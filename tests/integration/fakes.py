"""Scripted upstream registries (aiohttp test doubles) for what a real registry won't do on cue.

``ScriptedRegistry`` serves blobs and manifests from memory and can be told to misbehave:
trickle a blob slowly, die in the middle of one, send the wrong bytes, demand Bearer tokens
from a token realm, or redirect blob GETs to a separate "object storage" server. Every
request it (and its token and storage servers) sees is recorded for assertions.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiohttp import web

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Seen:
    """One request a fake server received."""

    server: str
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]


@dataclass
class Script:
    """How the fake misbehaves; change fields between requests to change its behaviour."""

    chunk_size: int = 64 << 10
    chunk_delay: float = 0.0
    """seconds to sleep between chunks of a blob body (a trickling upstream)"""
    die_after: int | None = None
    """close the connection when a blob body reaches this offset (also when resumed beyond it)"""
    die_times: int = 1_000_000
    """how many blob GETs die (then it behaves); the default: every one"""
    corrupt: bool = False
    """flip a byte in the middle of every blob body (the digest will not match)"""
    users: dict[str, str] = field(default_factory=dict)
    """when set, the registry wants a Bearer token from its realm, issued for these users"""
    redirect_blobs: bool = False
    """307-redirect blob GETs to the object storage server (with a signed URL)"""
    token_expires_in: int = 300


class ScriptedRegistry:
    """A tiny OCI registry over in-memory content, with a token realm and object storage.

    ``repository`` is the one repository it serves; blobs and manifests are keyed by digest,
    tags map to manifest digests.
    """

    def __init__(self, repository: str = "team/app", script: Script | None = None) -> None:
        self.repository = repository
        self.script = script or Script()
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, tuple[bytes, str]] = {}
        self.tags: dict[str, str] = {}
        self.seen: list[Seen] = []
        self.tokens: dict[str, str] = {}
        """token -> user it was issued to"""
        self.blob_gets_died = 0
        self.bytes_sent = 0
        self._token_ids = itertools.count(1)
        self._runners: list[web.AppRunner] = []
        self.url = ""
        self.storage_url = ""

    # -- content -------------------------------------------------------------------------
    def add_blob(self, data: bytes) -> str:
        digest = sha256(data)
        self.blobs[digest] = data
        return digest

    def add_image(self, tag: str, layers: list[bytes]) -> str:
        """Store a config, layers and a manifest tagged ``tag``; returns the manifest digest."""
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _descriptor("application/vnd.oci.image.config.v1+json", config, self.add_blob(config)),
            "layers": [_descriptor("application/vnd.oci.image.layer.v1.tar", b, self.add_blob(b)) for b in layers],
        }
        manifest = json.dumps(doc).encode()
        digest = sha256(manifest)
        self.manifests[digest] = (manifest, OCI_MANIFEST)
        self.tags[tag] = digest
        return digest

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> str:
        registry = web.Application()
        registry.router.add_route("*", "/v2/{tail:.*}", self._registry)
        tokens = web.Application()
        tokens.router.add_get("/token", self._token)
        storage = web.Application()
        storage.router.add_get("/{digest}", self._storage)
        urls = []
        for app in (registry, tokens, storage):
            runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self._runners.append(runner)
            server = site._server
            assert isinstance(server, asyncio.base_events.Server)
            urls.append(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        self.url, self.token_url, self.storage_url = urls
        return self.url

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    def requests(self, server: str = "registry", method: str | None = None, kind: str | None = None) -> list[Seen]:
        """Recorded requests to ``server`` (registry, token, storage), filtered."""
        return [
            s
            for s in self.seen
            if s.server == server and (method is None or s.method == method) and (kind is None or f"/{kind}/" in s.path)
        ]

    def _record(self, server: str, request: web.Request) -> None:
        self.seen.append(Seen(server, request.method, request.path, dict(request.query), dict(request.headers)))

    # -- the registry --------------------------------------------------------------------
    async def _registry(self, request: web.Request) -> web.StreamResponse:
        self._record("registry", request)
        if self.script.users and not self._token_ok(request):
            scope = f"repository:{self.repository}:pull"
            challenge = f'Bearer realm="{self.token_url}/token",service="fake-registry",scope="{scope}"'
            return _error(401, "UNAUTHORIZED", "token required", {"WWW-Authenticate": challenge})
        tail = request.match_info["tail"]
        if tail == "":
            return web.json_response({})
        prefix = f"{self.repository}/"
        if not tail.startswith(prefix):
            return _error(404, "NAME_UNKNOWN", "no such repository")
        kind, _, ref = tail[len(prefix) :].partition("/")
        if request.method not in ("GET", "HEAD"):
            return _error(405, "UNSUPPORTED", "read-only")
        if kind == "manifests":
            digest = self.tags.get(ref, ref)
            if digest not in self.manifests:
                return _error(404, "MANIFEST_UNKNOWN", ref)
            body, media_type = self.manifests[digest]
            headers = {"Docker-Content-Digest": digest, "Content-Type": media_type}
            if request.method == "HEAD":
                return web.Response(headers={**headers, "Content-Length": str(len(body))})
            return web.Response(body=body, headers=headers)
        if kind == "blobs" and ref in self.blobs:
            if request.method == "GET" and self.script.redirect_blobs:
                return web.Response(status=307, headers={"Location": f"{self.storage_url}/{ref}?sig=signed"})
            return await self._send_blob(request, ref)
        return _error(404, "BLOB_UNKNOWN", ref)

    def _token_ok(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        return header.startswith("Bearer ") and header[len("Bearer ") :] in self.tokens

    async def _send_blob(self, request: web.Request, digest: str) -> web.StreamResponse:
        data = self.blobs[digest]
        start, end, status = 0, len(data), 200
        header = request.headers.get("Range")
        if header is not None:
            first, _, last = header.removeprefix("bytes=").partition("-")
            start = int(first)
            end = min(len(data), int(last) + 1) if last else len(data)
            status = 206
        if self.script.corrupt:
            mid = len(data) // 2
            data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :]
        headers = {"Content-Length": str(end - start), "Docker-Content-Digest": digest}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        response = web.StreamResponse(status=status, headers=headers)
        if request.method == "HEAD":
            return response
        await response.prepare(request)
        dying = self.script.die_after is not None and self.blob_gets_died < self.script.die_times
        limit = end if not dying or self.script.die_after is None else min(end, self.script.die_after)
        pos = start
        while pos < limit:
            chunk = data[pos : min(limit, pos + self.script.chunk_size)]
            await response.write(chunk)
            self.bytes_sent += len(chunk)
            pos += len(chunk)
            if self.script.chunk_delay:
                await asyncio.sleep(self.script.chunk_delay)
        if pos < end:
            self.blob_gets_died += 1
            assert request.transport is not None
            request.transport.abort()  # the registry "dies": the body stops short
            return response
        await response.write_eof()
        return response

    # -- token realm and object storage --------------------------------------------------
    async def _token(self, request: web.Request) -> web.Response:
        self._record("token", request)
        header = request.headers.get("Authorization", "")
        try:
            user, _, password = base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")
        except ValueError:
            user, password = "", ""
        if not header.startswith("Basic ") or self.script.users.get(user) != password:
            return _error(401, "UNAUTHORIZED", "bad credentials")
        token = f"token-{user}-{next(self._token_ids)}"
        self.tokens[token] = user
        return web.json_response({"token": token, "expires_in": self.script.token_expires_in})

    async def _storage(self, request: web.Request) -> web.StreamResponse:
        self._record("storage", request)
        if "Authorization" in request.headers:
            return _error(400, "LEAK", "object storage received registry credentials")
        if request.query.get("sig") != "signed":
            return _error(403, "DENIED", "unsigned")
        digest = request.match_info["digest"]
        if digest not in self.blobs:
            return _error(404, "BLOB_UNKNOWN", digest)
        return await self._send_blob(request, digest)


def _descriptor(media_type: str, data: bytes, digest: str) -> dict[str, object]:
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def _error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    body = json.dumps({"errors": [{"code": code, "message": message}]})
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)
