"""The piece client against real HTTP servers on loopback: good pieces, refusals, broken and
lying parents, stalls, cancellation, and keep-alive connections the parent closed."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from shoal.agent.piece_client import PieceClient, PieceTransferError, split_address

PIECE = bytes(range(256)) * 4096  # 1 MiB
PATH = "/p2p/v1/blobs/sha256:ab/pieces/0"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Parent:
    """An aiohttp server on 127.0.0.1 that records what it was asked."""

    def __init__(self, handler: Handler, keepalive_timeout: float = 75.0) -> None:
        self.handler = handler
        self.keepalive_timeout = keepalive_timeout
        self.auth: list[str | None] = []
        self.client_ports: set[int] = set()
        self.address = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.auth.append(request.headers.get("Authorization"))
        assert request.transport is not None
        self.client_ports.add(request.transport.get_extra_info("peername")[1])
        return await self.handler(request)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, keepalive_timeout=self.keepalive_timeout, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return self.address

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[PieceClient]:
    c = PieceClient("sekrit", connect_timeout=2.0, read_timeout=1.0)
    yield c
    c.close()


async def serve(handler: Handler, **kwargs: float) -> AsyncIterator[Parent]:
    parent = Parent(handler, **kwargs)
    await parent.start()
    try:
        yield parent
    finally:
        await parent.stop()


async def good(request: web.Request) -> web.StreamResponse:
    return web.Response(body=PIECE, content_type="application/octet-stream")


async def stalled(request: web.Request) -> web.StreamResponse:
    """Headers and the first KiB of the piece, then nothing."""
    response = web.StreamResponse(headers={"Content-Length": str(len(PIECE))})
    await response.prepare(request)
    await response.write(PIECE[:1000])
    await asyncio.sleep(30)
    return response


class TestGoodPieces:
    async def test_body_hash_token_and_keepalive(self, client: PieceClient) -> None:
        async for parent in serve(good):
            seen: list[int] = []
            for _ in range(3):
                reply = await client.fetch(parent.address, PATH, len(PIECE), timeout=5, progress=seen.append)
                assert reply.status == 200
                assert reply.data is not None
                assert bytes(reply.data) == PIECE
                assert reply.sha256 == hashlib.sha256(PIECE).hexdigest()
            assert sum(seen) == 3 * len(PIECE)
            assert parent.auth == ["Bearer sekrit"] * 3
            assert len(parent.client_ports) == 1, "one keep-alive connection for consecutive pieces"

    async def test_refusals_are_answers_not_errors(self, client: PieceClient) -> None:
        async def busy(request: web.Request) -> web.StreamResponse:
            raise web.HTTPServiceUnavailable(text="too many uploads\n")

        async for parent in serve(busy):
            reply = await client.fetch(parent.address, PATH, len(PIECE), timeout=5)
            assert (reply.status, reply.data, reply.sha256) == (503, None, None)

    async def test_idle_connection_closed_by_parent_is_replaced(self, client: PieceClient) -> None:
        async for parent in serve(good, keepalive_timeout=0.1):
            assert (await client.fetch(parent.address, PATH, len(PIECE), timeout=5)).status == 200
            await asyncio.sleep(0.5)  # the parent drops the idle connection
            reply = await client.fetch(parent.address, PATH, len(PIECE), timeout=5)
            assert reply.data is not None
            assert bytes(reply.data) == PIECE
            assert len(parent.client_ports) == 2


class TestBadParents:
    async def test_wrong_length_is_refused(self, client: PieceClient) -> None:
        async for parent in serve(good):
            with pytest.raises(PieceTransferError, match="want 1000"):
                await client.fetch(parent.address, PATH, 1000, timeout=5)

    async def test_body_cut_short(self, client: PieceClient) -> None:
        async def cut(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Length": str(len(PIECE))})
            await response.prepare(request)
            await response.write(PIECE[:1000])
            assert request.transport is not None
            request.transport.close()
            return response

        async for parent in serve(cut):
            with pytest.raises(PieceTransferError):
                await client.fetch(parent.address, PATH, len(PIECE), timeout=5)

    async def test_garbage_instead_of_http(self, client: PieceClient) -> None:
        async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"\x00\xffnot http at all\r\n\r\n" * 10)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(garbage, "127.0.0.1", 0)
        try:
            address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
            with pytest.raises(PieceTransferError):
                await client.fetch(address, PATH, len(PIECE), timeout=5)
        finally:
            server.close()
            await server.wait_closed()

    async def test_nobody_listening(self, client: PieceClient) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(PieceTransferError):
            await client.fetch(f"127.0.0.1:{port}", PATH, len(PIECE), timeout=5)

    async def test_stalled_body_times_out(self, client: PieceClient) -> None:
        async for parent in serve(stalled):
            started = asyncio.get_running_loop().time()
            with pytest.raises(TimeoutError):
                await client.fetch(parent.address, PATH, len(PIECE), timeout=5)
            assert asyncio.get_running_loop().time() - started < 4  # read_timeout=1 s

    async def test_trickling_parent_is_cut_off_at_the_piece_timeout(self, client: PieceClient) -> None:
        """Bytes keep arriving (each read inside the socket timeout), but the piece is late."""

        async def trickle(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Length": str(len(PIECE))})
            await response.prepare(request)
            for _ in range(100):
                await response.write(b"x" * 1024)
                await asyncio.sleep(0.3)
            return response

        async for parent in serve(trickle):
            started = asyncio.get_running_loop().time()
            with pytest.raises(TimeoutError):
                await client.fetch(parent.address, PATH, len(PIECE), timeout=2)
            assert asyncio.get_running_loop().time() - started < 5


class TestCancel:
    async def test_cancel_aborts_the_transfer(self, client: PieceClient) -> None:
        slow = PieceClient(None, read_timeout=30.0, workers=1)
        try:
            async for parent in serve(stalled):
                task = asyncio.create_task(slow.fetch(parent.address, PATH, len(PIECE), timeout=60))
                await asyncio.sleep(0.3)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                # the single worker is free again: it did not sit out the 30 s read timeout
                parent.handler = good
                reply = await asyncio.wait_for(slow.fetch(parent.address, PATH, len(PIECE), timeout=5), 5)
                assert reply.data is not None
                assert bytes(reply.data) == PIECE
        finally:
            slow.close()


@pytest.mark.parametrize(
    ("address", "expected"),
    [("10.0.0.1:65001", ("10.0.0.1", 65001)), ("[::1]:80", ("::1", 80)), ("node-a:1", ("node-a", 1))],
)
def test_split_address(address: str, expected: tuple[str, int]) -> None:
    assert split_address(address) == expected


@pytest.mark.parametrize("address", ["nope", ":80", "host:", "host:http"])
def test_split_address_refuses(address: str) -> None:
    with pytest.raises(PieceTransferError):
        split_address(address)
