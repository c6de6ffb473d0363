"""The agent's preheat endpoint is bounded: anyone holding the peer secret may call it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from shoal.agent.preheat import MAX_PLATFORMS, MAX_PREHEATS, Preheater
from shoal.p2p.preheat import PREHEAT_PATH
from shoal.store.blobstore import BlobStore

TOKEN = {"Authorization": "Bearer t"}


class SlowPreheater(Preheater):
    def __init__(self, store: BlobStore, release: asyncio.Event) -> None:
        super().__init__(store, lambda: "http://127.0.0.1:1", ["r.test"], "t")
        self.release = release

    async def run(self, image: Any, req: Any) -> AsyncIterator[dict[str, Any]]:
        await self.release.wait()
        yield {"event": "done"}


class TestLimits:
    """At most MAX_PREHEATS run at once (429 beyond), and at most MAX_PLATFORMS per request."""

    async def test_concurrency_and_platforms(self, tmp_path: Path) -> None:
        store = BlobStore(tmp_path / "cache", ttl=3600.0, max_size=None)
        store.open()
        release = asyncio.Event()
        app = web.Application()
        SlowPreheater(store, release).add_routes(app)
        async with TestClient(TestServer(app)) as client:
            body = {"image": "r.test/team/app:v1"}
            running = [asyncio.create_task(client.post(PREHEAT_PATH, json=body, headers=TOKEN)) for _ in range(2)]
            await asyncio.sleep(0.2)
            assert len(running) == MAX_PREHEATS
            refused = await client.post(PREHEAT_PATH, json=body, headers=TOKEN)
            assert refused.status == 429
            many = {**body, "platforms": [f"linux/arch{i}" for i in range(MAX_PLATFORMS + 1)]}
            assert (await client.post(PREHEAT_PATH, json=many, headers=TOKEN)).status == 400
            release.set()
            for task in running:
                response = await task
                assert response.status == 200
                await response.read()
