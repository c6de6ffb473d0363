"""The agent against scripted upstreams: streaming, a registry that dies mid-blob or sends the
wrong bytes, the Bearer token flow with a redirect to object storage, and bad requests.

After every failure the cache must hold nothing wrong: no file under ``blobs/``, nothing
left in ``tmp/``, and the next pull (upstream healthy again) gets the right bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from agent_helpers import REG, basic, cache_files, metric, settled
from fakes import Script, ScriptedRegistry, sha256

from shoal.agent.access import AccessCache
from shoal.agent.metrics import AgentMetrics
from shoal.agent.origin import FLUSH_INTERVAL, OriginSource
from shoal.agent.server import Agent
from shoal.agent.upstreams import Upstreams
from shoal.core.digest import Digest
from shoal.oci.client import new_session
from shoal.oci.distribution import DistributionPath, parse_distribution_path
from shoal.p2p.ratelimit import TokenBucket
from shoal.store.blobstore import BlobStore
from shoal.store.partial import PartialBlob

AgentStarter = Callable[..., Awaitable[Agent]]
"""the ``start_agent`` fixture: ``await start_agent(registries={...}, **config)``"""

MiB = 1 << 20


def blob_data(size: int, seed: int) -> bytes:
    return hashlib.shake_256(seed.to_bytes(4, "big")).digest(size)


@pytest.fixture
async def fake() -> AsyncIterator[ScriptedRegistry]:
    registry = ScriptedRegistry()
    await registry.start()
    yield registry
    await registry.stop()


async def get(
    client: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes | Exception]:
    """Status and body, or the exception that cut the body short."""
    async with client.get(url, headers=headers) as resp:
        try:
            return resp.status, await resp.read()
        except aiohttp.ClientError as exc:
            return resp.status, exc


class TestStreaming:
    """A client gets the first bytes of a blob before the upstream has sent all of it."""

    async def test_first_bytes_early(
        self, fake: ScriptedRegistry, start_agent: AgentStarter, client: aiohttp.ClientSession
    ) -> None:
        data = blob_data(2 * MiB, 1)
        digest = fake.add_blob(data)
        fake.script = Script(chunk_size=64 << 10, chunk_delay=0.03)  # ~1 s for the whole blob
        agent = await start_agent({REG: fake.url})
        sent_at_first_byte = -1
        got = bytearray()
        async with client.get(f"{agent.url}/v2/{REG}/team/app/blobs/{digest}") as resp:
            assert resp.status == 200
            assert resp.headers["Docker-Content-Digest"] == digest
            async for chunk in resp.content.iter_any():
                if sent_at_first_byte < 0:
                    sent_at_first_byte = fake.bytes_sent
                got += chunk
        assert 0 < sent_at_first_byte <= len(data) // 2
        assert bytes(got) == data
        await settled(agent)
        assert [p.name for p in cache_files(agent, "blobs")] == [digest.partition(":")[2]]

    async def test_trickled_body_is_written_in_batches(
        self,
        fake: ScriptedRegistry,
        start_agent: AgentStarter,
        client: aiohttp.ClientSession,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A body arriving 4 KiB at a time is not written (hashed, announced) 4 KiB at a time:
        the fetch's thread writes what arrived every ``FLUSH_INTERVAL`` at most."""
        writes: list[int] = []
        original = PartialBlob.claim_in_thread

        def counting(self: PartialBlob, offset: int, data: bytes | bytearray | memoryview) -> None:
            writes.append(len(data))
            original(self, offset, data)

        monkeypatch.setattr(PartialBlob, "claim_in_thread", counting)
        data = blob_data(2 * MiB, 3)
        digest = fake.add_blob(data)
        fake.script = Script(chunk_size=4 << 10, chunk_delay=0.001)
        agent = await start_agent({REG: fake.url})
        started = time.monotonic()
        status, body = await get(client, f"{agent.url}/v2/{REG}/team/app/blobs/{digest}")
        elapsed = time.monotonic() - started
        assert (status, body) == (200, data)
        assert sum(writes) == len(data)
        assert len(writes) <= elapsed / FLUSH_INTERVAL + 2, (writes, elapsed)
        assert len(writes) < len(data) // (4 << 10) // 8, writes


class TestUpstreamDiesMidBlob:
    """A registry that stops in the middle of a blob: resumed if it comes back, else an error
    for the client and nothing in the cache."""

    async def test_dies_for_good(
        self, fake: ScriptedRegistry, start_agent: AgentStarter, client: aiohttp.ClientSession
    ) -> None:
        data = blob_data(4 * MiB, 2)
        digest = fake.add_blob(data)
        fake.script = Script(die_after=1 * MiB)
        agent = await start_agent({REG: fake.url})
        url = f"{agent.url}/v2/{REG}/team/app/blobs/{digest}"
        status, body = await get(client, url)
        assert status == 200  # headers went out before the upstream died ...
        assert isinstance(body, aiohttp.ClientPayloadError)  # ... the body did not complete
        await settled(agent)
        # the download's first try and 3 resumes, then the reader's own try to finish from the
        # registry (a download that fails under a reader is finished for it, verified)
        gets = fake.requests(method="GET", kind="blobs")
        assert len(gets) == 5
        assert gets[-1].headers["Range"] == f"bytes={1 * MiB}-{4 * MiB - 1}"
        assert cache_files(agent, "blobs") == []
        assert cache_files(agent, "tmp") == []
        assert agent.store.count == 0
        fake.script = Script()  # the registry is back
        assert await get(client, url) == (200, data)
        await settled(agent)
        assert [p.name for p in cache_files(agent, "blobs")] == [digest.partition(":")[2]]
        assert cache_files(agent, "tmp") == []

    async def test_dies_once_and_is_resumed(
        self, fake: ScriptedRegistry, start_agent: AgentStarter, client: aiohttp.ClientSession
    ) -> None:
        data = blob_data(4 * MiB, 3)
        digest = fake.add_blob(data)
        fake.script = Script(die_after=1 * MiB, die_times=1)
        agent = await start_agent({REG: fake.url})
        assert await get(client, f"{agent.url}/v2/{REG}/team/app/blobs/{digest}") == (200, data)
        gets = fake.requests(method="GET", kind="blobs")
        assert len(gets) == 2
        assert "Range" not in gets[0].headers
        resumed_at = int(gets[1].headers["Range"].removeprefix("bytes=").rstrip("-"))
        assert 0 < resumed_at <= 1 * MiB
        assert gets[1].headers["Range"] == f"bytes={resumed_at}-"
        await settled(agent)
        assert agent.store.blob_size(agent_digest(digest)) == len(data)
        assert metric(agent, "shoal_agent_origin_bytes_total", registry=REG) <= len(data) + 1 * MiB

    async def test_a_resume_through_object_storage_keeps_its_range(
        self, fake: ScriptedRegistry, start_agent: AgentStarter, client: aiohttp.ClientSession
    ) -> None:
        """A registry that redirects blob GETs (S3-style): the resumed GET's Range goes to the
        storage URL too, or the storage sends the whole blob again (review finding: the
        thread client dropped every header on a redirect, Range included)."""
        data = blob_data(4 * MiB, 9)
        digest = fake.add_blob(data)
        fake.script = Script(die_after=1 * MiB, die_times=1, redirect_blobs=True)
        agent = await start_agent({REG: fake.url})
        assert await get(client, f"{agent.url}/v2/{REG}/team/app/blobs/{digest}") == (200, data)
        storage = fake.requests("storage")
        assert len(storage) == 2
        assert "Authorization" not in storage[1].headers
        assert storage[1].headers["Range"].startswith("bytes=")
        assert fake.bytes_sent <= len(data) + 1 * MiB

    async def test_a_range_passed_through_to_object_storage_keeps_its_range(
        self, fake: ScriptedRegistry, start_agent: AgentStarter, client: aiohttp.ClientSession
    ) -> None:
        """A Range of a blob the agent does not hold goes to the registry as a Range; through
        a redirect to object storage it must stay one (the aiohttp client dropped it too)."""
        data = blob_data(4 * MiB, 10)
        digest = fake.add_blob(data)
        fake.script = Script(redirect_blobs=True)
        agent = await start_agent({REG: fake.url})
        headers = {"Range": "bytes=1000-1999"}
        async with client.get(f"{agent.url}/v2/{REG}/team/app/blobs/{digest}", headers=headers) as resp:
            assert resp.status == 206
            assert await resp.read() == data[1000:2000]
        ranged = [r for r in fake.requests("storage") if "Range" in r.headers]
        assert ranged, "the storage was asked for the whole blob"
        assert "Authorization" not in ranged[0].headers


class TestWrongBytes:
    """A registry that sends bytes not matching the digest: an error, nothing cached."""

    async def test_digest_mismatch(
        self, fake: ScriptedRegistry, start_agent: AgentStarter, client: aiohttp.ClientSession
    ) -> None:
        data = blob_data(3 * MiB, 4)
        digest = fake.add_blob(data)
        fake.script = Script(corrupt=True)
        agent = await start_agent({REG: fake.url})
        url = f"{agent.url}/v2/{REG}/team/app/blobs/{digest}"
        status, body = await get(client, url)
        assert status == 200
        assert isinstance(body, aiohttp.ClientPayloadError)  # never a complete wrong blob
        await settled(agent)
        assert cache_files(agent, "blobs") == []
        assert cache_files(agent, "tmp") == []
        assert metric(agent, "shoal_agent_digest_mismatches_total", source="origin") == 1
        fake.script = Script()
        assert await get(client, url) == (200, data)

    async def test_wrong_manifest(
        self, fake: ScriptedRegistry, start_agent: AgentStarter, client: aiohttp.ClientSession
    ) -> None:
        digest = fake.add_image("v1", [blob_data(1024, 5)])
        body, media_type = fake.manifests[digest]
        fake.manifests[digest] = (body + b" ", media_type)  # served under the old digest
        agent = await start_agent({REG: fake.url})
        for ref in ("v1", digest):
            async with client.get(f"{agent.url}/v2/{REG}/team/app/manifests/{ref}") as resp:
                assert resp.status == 502
                assert (await resp.json())["errors"][0]["code"] == "UPSTREAM_INVALID"
        assert cache_files(agent, "manifests") == []


def agent_digest(text: str) -> Digest:
    return Digest.parse(text)


class TestBearerTokenFlow:
    """Tokens come from the realm with the client's Basic credentials, are cached per
    credentials and scope, and never follow a redirect to object storage."""

    async def test_token_flow(
        self, fake: ScriptedRegistry, start_agent: AgentStarter, client: aiohttp.ClientSession
    ) -> None:
        layer = blob_data(1 * MiB, 6)
        manifest_digest = fake.add_image("v1", [layer])
        fake.script = Script(users={"alice": "s3cret", "bob": "hunter2"}, redirect_blobs=True)
        agent = await start_agent({REG: fake.url})
        base = f"{agent.url}/v2/{REG}/team/app"
        alice = basic("alice", "s3cret")

        async with client.get(f"{base}/manifests/v1", headers=alice) as resp:
            assert resp.status == 200
            assert resp.headers["Docker-Content-Digest"] == manifest_digest
        tokens = fake.requests("token")
        assert len(tokens) == 1
        assert tokens[0].headers["Authorization"] == alice["Authorization"]
        assert tokens[0].query == {"scope": "repository:team/app:pull", "service": "fake-registry"}

        layer_digest = sha256(layer)
        assert await get(client, f"{base}/blobs/{layer_digest}", alice) == (200, layer)
        assert len(fake.requests("token")) == 1  # cached for alice and this scope
        storage = fake.requests("storage")
        assert len(storage) == 1
        assert "Authorization" not in storage[0].headers
        registry_blob_gets = fake.requests(method="GET", kind="blobs")
        assert registry_blob_gets[-1].headers["Authorization"].startswith("Bearer token-alice-")

        bob = basic("bob", "hunter2")
        async with client.get(f"{base}/manifests/v1", headers=bob) as resp:
            assert resp.status == 200
        assert [t.headers["Authorization"] for t in fake.requests("token")] == [
            alice["Authorization"],
            bob["Authorization"],
        ]  # bob never rides on alice's token

    async def test_refused_credentials_also_for_cached_blobs(
        self, fake: ScriptedRegistry, start_agent: AgentStarter, client: aiohttp.ClientSession
    ) -> None:
        layer = blob_data(256 << 10, 7)
        fake.add_image("v1", [layer])
        fake.script = Script(users={"alice": "s3cret"})
        agent = await start_agent({REG: fake.url})
        url = f"{agent.url}/v2/{REG}/team/app/blobs/{sha256(layer)}"
        assert await get(client, url, basic("alice", "s3cret")) == (200, layer)
        await settled(agent)
        assert agent.store.blob_path(agent_digest(sha256(layer))) is not None
        for headers in (None, basic("alice", "wrong"), basic("mallory", "s3cret")):
            async with client.get(url, headers=headers) as resp:
                assert resp.status == 401
                assert resp.headers["WWW-Authenticate"].startswith("Basic ")
                assert (await resp.json())["errors"][0]["code"] == "UNAUTHORIZED"


async def raw_request(
    url: str, target: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Send ``target`` byte for byte (no client-side path normalisation) over HTTP/1.0."""
    host, _, port = url.removeprefix("http://").partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = [f"{method} {target} HTTP/1.0", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    parsed = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), parsed, body


class TestBadRequests:
    """Every malformed request is refused with an OCI error body, before any upstream I/O."""

    @pytest.mark.parametrize(
        ("target", "status", "code"),
        [
            (f"/v2/{REG}/team/app/blobs/sha256:abc", 400, "DIGEST_INVALID"),
            (f"/v2/{REG}/team/app/blobs/sha256:{'A' * 64}", 400, "DIGEST_INVALID"),
            (f"/v2/{REG}/team/app/blobs/md5:{'a' * 32}", 400, "DIGEST_INVALID"),
            (f"/v2/{REG}/team/app/blobs/latest", 400, "DIGEST_INVALID"),
            (f"/v2/{REG}/team/app/manifests/-bad", 400, "TAG_INVALID"),
            (f"/v2/{REG}/Team/App/manifests/v1", 400, "NAME_INVALID"),
            (f"/v2/{REG}/team//app/manifests/v1", 400, "NAME_INVALID"),
            (f"/v2/{REG}/../../etc/passwd/manifests/v1", 400, "NAME_INVALID"),
            (f"/v2/{REG}/team/../app/manifests/v1", 400, "NAME_INVALID"),
            (f"/v2/{REG}/%2e%2e/%2e%2e/etc/manifests/v1", 400, "NAME_INVALID"),
            (f"/v2/{REG}/team%2fapp/manifests/v1", 400, "NAME_INVALID"),
            (f"/v2/{REG}/team/app/blobs/sha256%3a{'a' * 64}", 400, "NAME_INVALID"),
            (f"/v2/{REG}/team/app/blobs/..%2f..%2f..%2fetc%2fpasswd", 400, "NAME_INVALID"),
            ("/v2/evil.example/team/app/manifests/v1", 404, "NAME_UNKNOWN"),
            ("/v2/team/app/manifests/v1?ns=evil.example", 404, "NAME_UNKNOWN"),
            ("/v2/team/app/manifests/v1?ns=..%2f..", 400, "NAME_INVALID"),
            ("/v2/team/app/manifests/v1", 404, "NAME_UNKNOWN"),
            ("/v2/_catalog", 404, "NOT_FOUND"),
        ],
    )
    async def test_refused(
        self, fake: ScriptedRegistry, start_agent: AgentStarter, target: str, status: int, code: str
    ) -> None:
        agent = await start_agent({REG: fake.url})
        got_status, headers, body = await raw_request(agent.url, target)
        assert got_status == status
        assert headers["content-type"].startswith("application/json")
        assert json.loads(body)["errors"][0]["code"] == code
        assert fake.seen == []  # nothing reached the upstream

    @pytest.mark.parametrize("method", ["PUT", "POST", "PATCH", "DELETE"])
    async def test_push_refused(self, fake: ScriptedRegistry, start_agent: AgentStarter, method: str) -> None:
        agent = await start_agent({REG: fake.url})
        for target in (
            f"/v2/{REG}/team/app/manifests/v1",
            f"/v2/team/app/blobs/uploads/?ns={REG}",  # how a push starts
            f"/v2/{REG}/team/app/blobs/uploads/",
        ):
            status, headers, body = await raw_request(agent.url, target, method, {"Content-Length": "0"})
            assert status == 405
            assert headers["allow"] == "GET, HEAD"
            error = json.loads(body)["errors"][0]
            assert error["code"] == "UNSUPPORTED"
            assert "pull-only" in error["message"]
        assert fake.seen == []

    async def test_unknown_blob_and_manifest(
        self, fake: ScriptedRegistry, start_agent: AgentStarter, client: aiohttp.ClientSession
    ) -> None:
        agent = await start_agent({REG: fake.url})
        missing = "sha256:" + "0" * 64
        for path, code in ((f"blobs/{missing}", "BLOB_UNKNOWN"), ("manifests/nope", "MANIFEST_UNKNOWN")):
            for method in ("GET", "HEAD"):
                async with client.request(method, f"{agent.url}/v2/{REG}/team/app/{path}") as resp:
                    assert resp.status == 404, (method, path)
                    if method == "GET":
                        assert (await resp.json())["errors"][0]["code"] == code
        await settled(agent)
        assert cache_files(agent, "blobs") == []
        assert cache_files(agent, "tmp") == []

    async def test_registry_unreachable(self, start_agent: AgentStarter, client: aiohttp.ClientSession) -> None:
        from shoal.testing.procs import free_port

        agent = await start_agent({REG: f"http://127.0.0.1:{free_port()}"})
        async with client.get(f"{agent.url}/v2/{REG}/team/app/manifests/v1") as resp:
            assert resp.status == 502
            assert (await resp.json())["errors"][0]["code"] == "UPSTREAM_UNAVAILABLE"
        async with client.get(f"{agent.url}/v2/{REG}/team/app/blobs/sha256:{'1' * 64}") as resp:
            assert resp.status == 502
        await settled(agent)
        assert cache_files(agent, "tmp") == []


@pytest.fixture
async def origin_setup(
    fake: ScriptedRegistry, tmp_path: Path
) -> AsyncIterator[Callable[[TokenBucket | None], tuple[OriginSource, BlobStore]]]:
    """An OriginSource (and its store) on the fake registry, outside any agent."""
    async with new_session() as session:
        metrics = AgentMetrics()
        upstreams = Upstreams({REG: fake.url}, session, metrics, AccessCache())
        store = BlobStore(tmp_path / "cache", ttl=3600, max_size=None)
        store.open()

        def make(bucket: TokenBucket | None) -> tuple[OriginSource, BlobStore]:
            return OriginSource(upstreams, store, metrics, bucket), store

        yield make


def blob_path(digest: str) -> DistributionPath:
    return parse_distribution_path(f"/v2/{REG}/team/app/blobs/{digest}", None, [REG])


def origin_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("shoal-origin", "shoal-hash", "shoal-get"))]


class TestOriginFetch:
    """The fetch's own threads: stopped at once by a cancel, and held to the rate limit."""

    async def test_cancel_stops_the_thread(
        self,
        fake: ScriptedRegistry,
        origin_setup: Callable[[TokenBucket | None], tuple[OriginSource, BlobStore]],
    ) -> None:
        """The swarm cancels an origin fetch when it loses the lease: the blocked ``recv``
        must end now, not at the read timeout, and nothing writes to the blob afterwards."""
        source, store = origin_setup(None)
        data = blob_data(4 * MiB, 7)
        digest = fake.add_blob(data)
        fake.script = Script(chunk_size=64 << 10, chunk_delay=0.05)  # ~3 s for the whole blob
        partial = store.begin(Digest.parse(digest), None)
        task = asyncio.create_task(source.fill(partial, blob_path(digest), None))
        while partial.contiguous == 0:
            await asyncio.sleep(0.01)
        assert origin_threads()
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 0.5
        for _ in range(20):  # each has handed its outcome over: only its return is left
            if not origin_threads():
                break
            await asyncio.sleep(0.01)
        assert origin_threads() == []
        at_cancel = partial.contiguous
        await asyncio.sleep(0.3)
        assert partial.contiguous == at_cancel < len(data)
        partial.fail(RuntimeError("stopped"))

    async def test_rate_limit(
        self,
        fake: ScriptedRegistry,
        origin_setup: Callable[[TokenBucket | None], tuple[OriginSource, BlobStore]],
    ) -> None:
        rate = 16 * MiB
        source, store = origin_setup(TokenBucket(rate, burst=1 * MiB))
        data = blob_data(12 * MiB, 8)
        digest = fake.add_blob(data)
        partial = store.begin(Digest.parse(digest), None)
        started = time.monotonic()
        await source.fill(partial, blob_path(digest), None)
        elapsed = time.monotonic() - started
        partial.finish()
        # the last buffer's tokens are taken after it was written: it may come for free
        # the tokens of a buffer are taken once it is written: the last one's cost no wait
        assert elapsed >= (len(data) - 1 * MiB - 4 * MiB) / rate * 0.9, elapsed
        partial.close()
