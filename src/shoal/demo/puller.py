"""A minimal OCI image puller (what a container runtime does), used by the demo and benchmarks.

Resolves the tag, picks one platform from an index, then fetches the config and layers
concurrently, checking every digest while the bytes stream; nothing is kept in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from shoal.core.error_body import http_error
from shoal.oci.mediatypes import DEFAULT_ACCEPT, INDEX_TYPES

Progress = Callable[[int], None]


class PullError(Exception):
    """The pull failed or the content did not match its digest."""


@dataclass(frozen=True, slots=True)
class PullResult:
    seconds: float
    blob_bytes: int
    blobs: int


async def _manifest(session: aiohttp.ClientSession, base: str, name: str, ref: str) -> tuple[dict[str, Any], str]:
    async with session.get(f"{base}/v2/{name}/manifests/{ref}", headers={"Accept": DEFAULT_ACCEPT}) as resp:
        if resp.status != 200:
            raise PullError(f"manifest {name}:{ref}: {http_error(resp.status, await resp.read())}")
        body = await resp.read()
        media_type = resp.headers.get("Content-Type", "").split(";")[0]
    if ref.startswith("sha256:") and "sha256:" + hashlib.sha256(body).hexdigest() != ref:
        raise PullError(f"manifest {ref} does not match its digest")
    doc = json.loads(body)
    return doc, media_type or str(doc.get("mediaType", ""))


def pick_platform(index: dict[str, Any], platform: str = "linux/amd64") -> str:
    os_name, _, arch = platform.partition("/")
    manifests = index.get("manifests") or []
    for entry in manifests:
        p = entry.get("platform") or {}
        if p.get("os") == os_name and p.get("architecture") == arch:
            return str(entry["digest"])
    if not manifests:
        raise PullError("image index lists no manifests")
    return str(manifests[0]["digest"])


async def _blob(session: aiohttp.ClientSession, base: str, name: str, digest: str, progress: Progress | None) -> int:
    hasher = hashlib.sha256()
    size = 0
    async with session.get(f"{base}/v2/{name}/blobs/{digest}") as resp:
        if resp.status != 200:
            raise PullError(f"blob {digest}: {http_error(resp.status, await resp.read())}")
        async for chunk in resp.content.iter_chunked(1 << 20):
            hasher.update(chunk)
            size += len(chunk)
            if progress is not None:
                progress(len(chunk))
    if "sha256:" + hasher.hexdigest() != digest:
        raise PullError(f"blob {digest} has wrong content")
    return size


async def pull_image(
    base: str,
    name: str,
    reference: str,
    *,
    progress: Progress | None = None,
    concurrency: int = 3,
    platform: str = "linux/amd64",
    timeout: float = 1800.0,
) -> PullResult:
    """Pull ``name:reference`` from the registry (or mirror) at ``base``; verify every digest."""
    started = time.monotonic()
    client_timeout = aiohttp.ClientTimeout(total=timeout, sock_read=120)
    async with aiohttp.ClientSession(timeout=client_timeout, auto_decompress=False) as session:
        doc, media_type = await _manifest(session, base, name, reference)
        if media_type in INDEX_TYPES or "manifests" in doc:
            doc, _ = await _manifest(session, base, name, pick_platform(doc, platform))
        digests = [doc["config"]["digest"], *(layer["digest"] for layer in doc.get("layers", []))]
        gate = asyncio.Semaphore(concurrency)

        async def one(digest: str) -> int:
            async with gate:
                return await _blob(session, base, name, digest, progress)

        sizes = await asyncio.gather(*(one(d) for d in digests))
    return PullResult(time.monotonic() - started, sum(sizes), len(digests))
