"""A tiny read-only origin registry for ``shoal demo``: serves generated images over OCI pull.

It speaks enough of the distribution API for skopeo, containerd and Shoal's agent: ``/v2/``,
manifests by tag or digest, blobs with one ``Range``, tag lists; GET and HEAD. Blob bytes
actually written to clients are counted (in total and per digest), and an optional
``upload_rate`` caps the origin's egress with one token bucket shared by all responses, so
the demo can show an origin bottleneck.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path
from typing import BinaryIO

from aiohttp import web
from aiohttp.typedefs import Handler

from shoal.demo.imagegen import BlobInfo, GeneratedImage
from shoal.oci.errors import DistributionError, ErrorCode
from shoal.oci.ranges import parse_range
from shoal.p2p.ratelimit import TokenBucket

__all__ = ["DemoOrigin"]

API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}
_CHUNK = 256 * 1024


class DemoOrigin:
    """Serve ``images`` (repository name -> image) read-only on ``start()``'s address.

    Parameters:
        images: repository name (``team/app``) -> the generated image it holds.
        upload_rate: optional cap on blob bytes per second sent to all clients together.
    """

    def __init__(self, images: dict[str, GeneratedImage], *, upload_rate: float | None = None) -> None:
        self.images = dict(images)
        self.upload_rate = upload_rate
        self.blob_bytes_served = 0
        self.blob_bytes_by_digest: defaultdict[str, int] = defaultdict(int)
        self.blob_requests = 0
        self.manifest_requests = 0
        self._bucket = TokenBucket(upload_rate, burst=max(upload_rate / 10, 64 * 1024)) if upload_rate else None
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- lifecycle -----------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[_errors_middleware])
        app.on_response_prepare.append(_add_api_version)
        app.router.add_get("/v2/", self._base)
        app.router.add_get(r"/v2/{name:.+}/manifests/{reference}", self._manifest)
        app.router.add_get(r"/v2/{name:.+}/blobs/{digest}", self._blob)
        app.router.add_get(r"/v2/{name:.+}/tags/list", self._tags)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen and return the base URL, e.g. ``http://127.0.0.1:43121``."""
        if self._runner is not None:
            raise RuntimeError("origin already started")
        runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        address = runner.addresses[0]
        self.url = f"http://{host}:{address[1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- handlers ------------------------------------------------------------------------

    def _image(self, request: web.Request) -> GeneratedImage:
        name = request.match_info["name"]
        image = self.images.get(name)
        if image is None:
            raise DistributionError(ErrorCode.NAME_UNKNOWN, f"repository {name[:200]!r} not known")
        return image

    async def _base(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({})

    async def _tags(self, request: web.Request) -> web.StreamResponse:
        image = self._image(request)
        return web.json_response({"name": request.match_info["name"], "tags": [image.tag]})

    async def _manifest(self, request: web.Request) -> web.StreamResponse:
        image = self._image(request)
        reference = request.match_info["reference"]
        info: BlobInfo | None
        if reference == image.tag:
            info = next(m for m in image.manifests if m.digest == image.top_digest)
        else:
            info = next((m for m in image.manifests if m.digest == reference), None)
        if info is None:
            raise DistributionError(ErrorCode.MANIFEST_UNKNOWN, f"manifest {reference[:200]!r} not known")
        self.manifest_requests += 1
        body = await asyncio.to_thread(image.blob_path(info.digest).read_bytes)
        headers = {"Docker-Content-Digest": info.digest, "Content-Type": info.media_type}
        return web.Response(body=body, headers=headers)  # aiohttp sends no body for HEAD

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        image = self._image(request)
        digest = request.match_info["digest"]
        info = next((b for b in (*image.blobs, *image.manifests) if b.digest == digest), None)
        if info is None:
            raise DistributionError(ErrorCode.BLOB_UNKNOWN, f"blob {digest[:200]!r} not known")
        byte_range = parse_range(request.headers.get("Range"), info.size)
        start, length = (0, info.size) if byte_range is None else (byte_range.start, byte_range.length)
        response = web.StreamResponse(status=200 if byte_range is None else 206)
        response.headers.update(
            {
                "Docker-Content-Digest": digest,
                "Content-Type": "application/octet-stream",
                "Accept-Ranges": "bytes",
                "ETag": f'"{digest}"',
            }
        )
        if byte_range is not None:
            response.headers["Content-Range"] = byte_range.content_range()
        response.content_length = length
        await response.prepare(request)
        if request.method != "HEAD":
            self.blob_requests += 1
            await self._send_file(response, image.blob_path(digest), digest, start, length)
        await response.write_eof()
        return response

    async def _send_file(self, response: web.StreamResponse, path: Path, digest: str, start: int, length: int) -> None:
        f: BinaryIO = await asyncio.to_thread(open, path, "rb")
        try:
            await asyncio.to_thread(f.seek, start)
            remaining = length
            while remaining > 0:
                chunk = await asyncio.to_thread(f.read, min(_CHUNK, remaining))
                if not chunk:
                    raise ConnectionResetError(f"{path} is shorter than expected")
                if self._bucket is not None:
                    await self._bucket.consume(len(chunk))
                await response.write(chunk)
                remaining -= len(chunk)
                self.blob_bytes_served += len(chunk)
                self.blob_bytes_by_digest[digest] += len(chunk)
        finally:
            await asyncio.to_thread(f.close)


async def _add_api_version(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(API_VERSION_HEADER)


@web.middleware
async def _errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except DistributionError as exc:
        headers = {"Content-Type": "application/json", **exc.headers}
        return web.Response(status=exc.status, body=exc.body(), headers=headers)
