"""A peer that speaks the wire protocol and serves whatever the test says: the liar of the
lying-peer tests. Built on the same sans-I/O :class:`shoal.p2p.wire.Connection` as the agent,
over asyncio streams, so it can lie about content but not break the protocol."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from shoal.agent.peer_link import dial, peer_secret
from shoal.p2p import wire
from shoal.p2p.pieces import choose_piece_size, piece_count
from shoal.p2p.tls import TlsDirectory


class WirePeer:
    """Serves every blob in ``pieces`` (digest -> piece count) as complete; a REQUEST gets
    ``body(digest, index)``. ``requests`` records what was asked. With ``tls`` (a node
    certificate of the fleet's CA for ``host``) it is a compromised node: a peer with a valid
    identity that lies about content."""

    def __init__(
        self,
        host: str,
        token: str,
        pieces: dict[str, int],
        body: Callable[[str, int], bytes],
        tls: TlsDirectory | None = None,
    ) -> None:
        self.host = host
        self.tls = tls
        self.secret = peer_secret(token.strip())
        self.pieces = pieces
        self.body = body
        self.requests: list[tuple[str, int]] = []
        self.address = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        context = None if self.tls is None else self.tls.server_context()
        self._server = await asyncio.start_server(self._serve, self.host, 0, ssl=context)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"{self.host}:{port}"
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = wire.Connection(wire.Role.SERVER, secret=self.secret)
        try:
            while True:
                event = conn.next_event()
                if event is wire.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                    continue
                if isinstance(event, wire.Close | wire.ConnectionClosed | wire.Signal):
                    return
                for reply in self._answer(event):
                    writer.write(conn.send(reply))
                    if isinstance(reply, wire.Piece):
                        data = self.body(reply.digest, reply.index)
                        writer.write(data)
                        conn.body_sent(len(data))
                await writer.drain()
        except (wire.ProtocolError, ConnectionError):
            return
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _answer(self, event: wire.Event) -> list[wire.Event]:
        match event:
            case wire.Hello():
                return [wire.Welcome(self.address)]
            case wire.Interested(digest, count):
                held = range(count) if self.pieces.get(digest) == count else ()
                return [wire.Bitfield.of(digest, count, held)]
            case wire.Request(digest, index):
                self.requests.append((digest, index))
                return [wire.Piece(digest, index, len(self.body(digest, index)))]
            case _:
                return []


def bitfield_of(
    address: str, peer_id: str, secret: bytes, digest: str, size: int, tls: TlsDirectory | None = None
) -> int:
    """Dial an agent as a peer (from 127.0.0.1, with ``tls``'s certificate for it when the
    agent runs TLS) and ask about ``digest``: how many pieces it says it holds."""
    context = None if tls is None else tls.client_context()
    channel, conn = dial(address, peer_id, "127.0.0.1:1", secret, 5.0, "127.0.0.1", context)
    try:
        channel.sock.settimeout(5.0)
        channel.sendall(conn.send(wire.Interested(digest, piece_count(size, choose_piece_size(size)))))
        while True:
            event = conn.next_event()
            if event is wire.NEED_DATA:
                conn.receive_data(channel.recv(65536))
            elif isinstance(event, wire.Bitfield):
                return sum(1 for _ in event.indices())
            elif not isinstance(event, wire.KeepAlive):
                raise AssertionError(f"unexpected {event!r}")
    finally:
        channel.sock.close()
