"""``POST /p2p/v1/preheat``: the agent pulls an image into its cache through its own mirror API.

Going through ``/v2/...`` on the agent itself (over loopback) rather than around it keeps one
pull path: the swarm, the origin lease, the registry's authorization and the digest checks
all apply as in a rollout, so N agents preheating at once cost the registry one copy of
each blob. Blobs already cached are not read again. The protocol is in ``shoal.p2p.preheat``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from aiohttp import web

from shoal.core.digest import Digest, DigestError
from shoal.core.error_body import http_error
from shoal.core.reference import ImageReference, ReferenceError
from shoal.oci.image import BlobRef, ImageError, host_platform, image_blobs, is_index, pick_platforms
from shoal.oci.mediatypes import DEFAULT_ACCEPT
from shoal.p2p.preheat import PREHEAT_PATH, PreheatRequest, request_from_json
from shoal.store.blobstore import BlobStore

log = logging.getLogger(__name__)

MAX_PREHEATS = 2
"""preheats one agent runs at once: anyone holding the peer secret may ask, and each fills the
cache (evicting the working set) with what it names"""
MAX_PLATFORMS = 8

CONCURRENCY = 4
COMMIT_WAIT = 15.0
"""seconds to wait, after a blob's last byte, for the download to land in the cache."""

Event = dict[str, Any]


class PreheatFailed(Exception):
    """The image could not be pulled through this agent."""


def loopback(url: str) -> str:
    """The agent's own URL with a wildcard listen address replaced by loopback."""
    return url.replace("//0.0.0.0:", "//127.0.0.1:").replace("//[::]:", "//[::1]:")


class Preheater:
    """Serves ``POST /p2p/v1/preheat``.

    Parameters:
        store: the agent's cache (to skip cached blobs and to confirm new ones landed).
        base_url: returns the agent's own URL once it listens.
        registries: registry names the agent mirrors.
        token: the peer token callers must present (None: not checked).
    """

    def __init__(self, store: BlobStore, base_url: Callable[[], str], registries: list[str], token: str | None) -> None:
        self.store = store
        self.base_url = base_url
        self.registries = registries
        self.token = token
        self._running = asyncio.Semaphore(MAX_PREHEATS)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(PREHEAT_PATH, self._handle)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.token is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                raise web.HTTPUnauthorized(text="peer token required\n")
        try:
            req = request_from_json(await request.json())
            image = ImageReference.parse(req.image)
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError, ReferenceError) as exc:
            raise web.HTTPBadRequest(text=f"preheat: {exc}\n") from None
        if image.registry not in self.registries:
            raise web.HTTPBadRequest(
                text=f"preheat: registry {image.registry} is not mirrored here ({', '.join(self.registries)})\n"
            )
        if len(req.platforms) > MAX_PLATFORMS:
            raise web.HTTPBadRequest(text=f"preheat: at most {MAX_PLATFORMS} platforms at a time\n")
        if self._running.locked():
            raise web.HTTPTooManyRequests(text=f"preheat: {MAX_PREHEATS} preheats already running here\n")
        async with self._running:
            response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await response.prepare(request)
            async for event in self.run(image, req):
                await response.write(json.dumps(event).encode() + b"\n")
            await response.write_eof()
        return response

    async def run(self, image: ImageReference, req: PreheatRequest) -> AsyncIterator[Event]:
        """Pull ``image``; yields the events of ``shoal.p2p.preheat`` (the last one ends it)."""
        started = time.monotonic()
        headers = {"Authorization": req.authorization} if req.authorization else {}
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=300)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False, headers=headers) as session:
            pull = _Pull(session, loopback(self.base_url()), image)
            try:
                blobs = await pull.blobs(req.platforms or [host_platform()])
            except (PreheatFailed, ImageError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("preheat of %s failed: %s", image, exc)
                yield {"event": "error", "error": str(exc) or type(exc).__name__}
                return
            yield {"event": "manifest", "blobs": len(blobs), "bytes": sum(b.size for b in blobs)}
            gate = asyncio.Semaphore(CONCURRENCY)
            fetched = 0

            async def one(blob: BlobRef) -> Event:
                event: Event = {"event": "blob", "digest": blob.digest, "size": blob.size, "cached": True}
                async with gate:
                    if self._held(blob.digest):
                        return event
                    event["cached"] = False
                    try:
                        await pull.blob(blob.digest)
                    except (PreheatFailed, aiohttp.ClientError, TimeoutError) as exc:
                        log.warning("preheat of %s: %s", image, exc)
                        return {**event, "error": str(exc) or type(exc).__name__}
                    await self._landed(blob.digest)
                    return event

            for next_done in asyncio.as_completed([one(b) for b in blobs]):
                event = await next_done
                fetched += not event["cached"] and "error" not in event
                yield event
            missing = [b.digest for b in blobs if not self._held(b.digest)]
        log.info(
            "preheated %s: %d blobs, %d fetched, %d missing, %.1f s",
            image,
            len(blobs),
            fetched,
            len(missing),
            time.monotonic() - started,
        )
        yield {
            "event": "done",
            "held": not missing,
            "blobs": len(blobs),
            "bytes": sum(b.size for b in blobs),
            "fetched": fetched,
            "missing": missing,
        }

    def _held(self, digest: str) -> bool:
        try:
            return self.store.blob_path(Digest.parse(digest)) is not None
        except DigestError:
            return False

    async def _landed(self, digest: str) -> None:
        deadline = time.monotonic() + COMMIT_WAIT
        while not self._held(digest) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


class _Pull:
    """One image pulled through the agent's own ``/v2`` API (containerd's ``?ns=`` form)."""

    def __init__(self, session: aiohttp.ClientSession, base: str, image: ImageReference) -> None:
        self.session = session
        self.base = base
        self.image = image

    def _url(self, kind: str, reference: str) -> str:
        return f"{self.base}/v2/{self.image.repository}/{kind}/{reference}"

    async def _manifest(self, reference: str) -> tuple[dict[str, Any], str]:
        async with self.session.get(
            self._url("manifests", reference), params={"ns": self.image.registry}, headers={"Accept": DEFAULT_ACCEPT}
        ) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise PreheatFailed(f"manifest {self.image.repository}:{reference}: {http_error(resp.status, body)}")
            media_type = resp.headers.get("Content-Type", "").split(";")[0]
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise PreheatFailed(f"manifest {reference}: not JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise PreheatFailed(f"manifest {reference}: not a JSON object")
        return doc, media_type

    async def blobs(self, platforms: list[str]) -> list[BlobRef]:
        doc, media_type = await self._manifest(self.image.reference)
        manifests = [doc]
        if is_index(doc, media_type):
            manifests = [(await self._manifest(d))[0] for d in pick_platforms(doc, platforms)]
        unique: dict[str, BlobRef] = {}
        for manifest in manifests:
            for blob in image_blobs(manifest):
                unique.setdefault(blob.digest, blob)
        return list(unique.values())

    async def blob(self, digest: str) -> None:
        async with self.session.get(self._url("blobs", digest), params={"ns": self.image.registry}) as resp:
            if resp.status != 200:
                raise PreheatFailed(f"blob {digest}: {http_error(resp.status, await resp.read())}")
            async for _ in resp.content.iter_chunked(1 << 20):
                pass
