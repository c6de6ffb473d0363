"""The endpoints an agent serves to its peers: which pieces it holds, and the pieces themselves.

Pieces come from the complete cache file or from a blob still downloading (pipelining: a
child can take piece 7 from a parent that is itself still fetching pieces 8..). Only bytes
the parent has verified are offered. Uploads count against the agent's token bucket and
are bounded in number, so one node cannot be drowned by children.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

from shoal.agent.metrics import AgentMetrics
from shoal.core.digest import Digest, DigestError
from shoal.p2p.pieces import choose_piece_size, piece_count, piece_span
from shoal.p2p.protocol import PeerStatus, decode_bitfield, encode_bitfield, to_json
from shoal.p2p.ratelimit import TokenBucket
from shoal.store.blobstore import BlobStore
from shoal.store.partial import PartialBlob, PartialState

MAX_WAIT = 10.0
STATUS_BATCH = 0.05
SUPERSEED_COPIES = 2
"""While a blob is still downloading here, a piece already sent to this many children is no
longer advertised: children get it from those children, and this node's upload link (the
origin fetcher's, above all) carries new pieces instead of the same ones again. Once the
blob is complete every piece is advertised again, so nobody can be left without a source."""
UPLOAD_CHUNK = 256 << 10


class PeerEndpoints:
    def __init__(
        self,
        store: BlobStore,
        partials: Mapping[Digest, PartialBlob],
        metrics: AgentMetrics,
        bucket: TokenBucket,
        token: str | None,
        max_uploads: int = 16,
    ) -> None:
        self._store = store
        self._partials = partials
        self._metrics = metrics
        self._bucket = bucket
        self._token = token
        self._uploads = asyncio.Semaphore(max_uploads)
        self._uploads_of: dict[Digest, dict[int, int]] = {}
        """pieces of blobs still downloading -> how often each went to a child"""

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/p2p/v1/blobs/{digest}/status", self.status)
        app.router.add_get("/p2p/v1/blobs/{digest}/pieces/{index}", self.piece)

    def _check(self, request: web.Request) -> Digest:
        if self._token is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode()):
                raise web.HTTPUnauthorized(text="peer token required\n")
        try:
            return Digest.parse(request.match_info["digest"])
        except DigestError as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from None

    def _bits(self, digest: Digest) -> tuple[int, list[bool], bool] | None:
        size = self._store.blob_size(digest)
        if size is not None:
            return size, [True] * piece_count(size, choose_piece_size(size)), True
        partial = self._partials.get(digest)
        if partial is None or partial.size is None or partial.state is PartialState.FAILED:
            return None
        size = partial.size
        piece_size = choose_piece_size(size)
        sent = self._uploads_of.get(digest, {})
        bits = [
            partial.has(*piece_span(i, size, piece_size)) and sent.get(i, 0) < SUPERSEED_COPIES
            for i in range(piece_count(size, piece_size))
        ]
        return size, bits, False

    async def status(self, request: web.Request) -> web.Response:
        digest = self._check(request)
        try:
            have = int(request.query.get("have", "-1"))
            wait = min(MAX_WAIT, max(0.0, float(request.query.get("wait", "0"))))
        except ValueError:
            raise web.HTTPBadRequest(text="have and wait must be numbers\n") from None
        want_text = request.query.get("want")
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            bits = self._bits(digest)
            if bits is None:
                raise web.HTTPNotFound(text=f"{digest} not held here\n")
            size, flags, complete = bits
            count = sum(flags)
            relevant = count
            if want_text is not None:
                try:
                    want = decode_bitfield(want_text, len(flags))
                except ValueError as exc:
                    raise web.HTTPBadRequest(text=f"want: {exc}\n") from None
                relevant = sum(1 for f, w in zip(flags, want, strict=True) if f and w)
            remaining = deadline - asyncio.get_running_loop().time()
            partial = self._partials.get(digest)
            if relevant > have or complete or remaining <= 0 or partial is None:
                status = PeerStatus(size, choose_piece_size(size), encode_bitfield(flags), complete, count)
                return web.json_response(to_json(status))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(partial.pieces_changed().wait(), remaining)
            # a downloading blob changes with every write: answer with a batch of new pieces,
            # not once per write, so long-polls cost the parent (and child) little CPU
            await asyncio.sleep(min(STATUS_BATCH, max(0.0, deadline - asyncio.get_running_loop().time())))

    async def piece(self, request: web.Request) -> web.StreamResponse:
        digest = self._check(request)
        try:
            index = int(request.match_info["index"])
        except ValueError:
            raise web.HTTPBadRequest(text="piece index must be an integer\n") from None
        path, size = self._source(digest)
        if path is None or size is None:
            raise web.HTTPNotFound(text=f"{digest} not held here\n")
        try:
            offset, length = piece_span(index, size, choose_piece_size(size))
        except ValueError as exc:
            raise web.HTTPRequestRangeNotSatisfiable(text=f"{exc}\n") from None
        partial = self._partials.get(digest)
        if self._store.blob_size(digest) is None and (partial is None or not partial.has(offset, length)):
            raise web.HTTPNotFound(text=f"piece {index} of {digest} not held here\n")
        if self._uploads.locked():
            raise web.HTTPServiceUnavailable(text="too many uploads, ask another peer\n")
        async with self._uploads:
            try:
                fobj = open(path, "rb")  # noqa: SIM115 - closed below; survives a rename of the path
            except OSError:
                raise web.HTTPNotFound(text=f"{digest} no longer held here\n") from None
            try:
                await self._bucket.consume(length)
                response = web.StreamResponse(
                    headers={"Content-Type": "application/octet-stream", "Content-Length": str(length)}
                )
                await self._send(request, response, fobj, offset, length)
            except ConnectionError:
                # the child went away mid-piece (it gave up, or was cancelled): nothing to answer
                self._metrics.peer_uploads_aborted.inc()
                return response
            finally:
                fobj.close()
        self._metrics.peer_bytes.labels("upload").inc(length)
        self._metrics.pieces_served.inc()
        if partial is not None and self._store.blob_size(digest) is None:
            counts = self._uploads_of.setdefault(digest, {})
            counts[index] = counts.get(index, 0) + 1
        else:
            self._uploads_of.pop(digest, None)
        return response

    @staticmethod
    async def _send(
        request: web.Request, response: web.StreamResponse, fobj: BinaryIO, offset: int, length: int
    ) -> None:
        """Zero-copy ``sendfile`` on asyncio's loop; plain reads and writes where it is missing."""
        await response.prepare(request)
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("peer went away")
        try:
            await asyncio.get_running_loop().sendfile(transport, fobj, offset, length)
        except NotImplementedError:
            sent = 0
            while sent < length:
                chunk = os.pread(fobj.fileno(), min(UPLOAD_CHUNK, length - sent), offset + sent)
                if not chunk:
                    raise OSError(f"short read serving a piece of {fobj.name}") from None
                await response.write(chunk)
                sent += len(chunk)
        await response.write_eof()

    def _source(self, digest: Digest) -> tuple[Path | None, int | None]:
        path = self._store.blob_path(digest)
        if path is not None:
            return path, self._store.blob_size(digest)
        partial = self._partials.get(digest)
        if partial is None or partial.state is PartialState.FAILED:
            return None, None
        return partial.path, partial.size
