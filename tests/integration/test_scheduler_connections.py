"""How many TLS connections an agent opens to a real scheduler, and what each costs it.

A TLS handshake with a node certificate costs the scheduler as much CPU as about fifteen calls
on a kept-alive connection; at a rollout's start every agent calls at once, and on a starved
scheduler each connection beyond the needed ones queues a handshake it pays for
(docs/scheduler.md, "Connections")."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shoal.p2p import scheduler_client
from shoal.p2p.enrollment import SchedulerTls
from shoal.p2p.protocol import JoinRequest, Report, TaskView
from shoal.p2p.scheduler_client import SchedulerClient, SchedulerUnavailable
from shoal.scheduler.ca import CaSource, load_ca, write_new_ca
from shoal.scheduler.config import SchedulerConfig
from shoal.scheduler.server import Scheduler
from shoal.scheduler.tls import ServerTls

MiB = 1 << 20
ME = "127.0.0.1:65001"


def node_tls(work: Path) -> SchedulerTls:
    """A node certificate for 127.0.0.1 from the CA in ``work/ca``."""
    key = ec.generate_private_key(ec.SECP256R1())
    issued = load_ca(work / "ca").issue(
        key.public_key(), "node-a", dns_names=(), ips=("127.0.0.1",), valid_for=datetime.timedelta(hours=1), client=True
    )
    (work / "node.pem").write_bytes(issued.pem)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (work / "node.key").write_bytes(pem)
    return SchedulerTls(work / "ca" / "tls.crt", work / "node.pem", work / "node.key")


@dataclass
class Opened:
    count: int = 0


@pytest.fixture
async def scheduler(tmp_path: Path) -> AsyncIterator[Scheduler]:
    write_new_ca(tmp_path / "ca")
    node = Scheduler(SchedulerConfig(listen="127.0.0.1:0", peer_token="t0ken", tls_ca_dir=tmp_path / "ca"))
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


async def counting_session(opened: Opened) -> aiohttp.ClientSession:
    trace = aiohttp.TraceConfig()

    async def created(*_: Any) -> None:
        opened.count += 1

    trace.on_connection_create_end.append(created)
    # the agent's own pool allows 64 connections per host (shoal.oci.client.new_session)
    connector = aiohttp.TCPConnector(limit=256, limit_per_host=64)
    return aiohttp.ClientSession(connector=connector, trace_configs=[trace])


class TestConnectionsPerAgent:
    async def test_a_burst_of_calls_shares_a_few_connections(self, scheduler: Scheduler, tmp_path: Path) -> None:
        """Three downloads long-poll hashes while they join and report in a burst: the long-polls
        hold a connection each, the short calls share two, instead of one handshake per call.
        This agent holds leases (it joined first), and a holder's reports (one out at a time
        per download) have a connection of their own: at most one more per download."""
        opened = Opened()
        session = await counting_session(opened)
        client = SchedulerClient(session, [scheduler.url], None, tls=node_tls(tmp_path))
        digests = [f"sha256:{n:064x}" for n in range(1, 4)]
        try:
            await asyncio.gather(*(client.join(d, JoinRequest(ME, ME, 8 * MiB, MiB)) for d in digests))
            polls = [asyncio.create_task(client.hashes(d, 0, wait=1.0)) for d in digests]

            async def reports(digest: str) -> list[TaskView]:
                return [
                    await client.report(
                        digest, Report(ME, ME, pieces=k, contiguous=k * MiB, size=8 * MiB, piece_size=MiB)
                    )
                    for k in range(1, 6)
                ]

            views = [v for vs in await asyncio.gather(*(reports(d) for d in digests)) for v in vs]
            await asyncio.gather(*polls)
        finally:
            await session.close()
        assert len(views) == 15
        assert any(v.fetcher == ME for v in views)  # leases are spread: at least one is ours
        assert opened.count <= 2 * len(digests) + scheduler_client.CALLS_IN_FLIGHT

    async def test_clients_of_one_session_share_the_slots(self, scheduler: Scheduler, tmp_path: Path) -> None:
        """The swarm's, the presence's and the cluster listing's clients use one agent session:
        together they still open no more than the short calls' slots."""
        opened = Opened()
        session = await counting_session(opened)
        tls = node_tls(tmp_path)
        clients = [SchedulerClient(session, [scheduler.url], None, tls=tls) for _ in range(3)]
        digest = f"sha256:{7:064x}"
        try:
            await asyncio.gather(
                *(c.join(digest, JoinRequest(ME, ME, 8 * MiB, MiB)) for c in clients for _ in range(4))
            )
        finally:
            await session.close()
        assert opened.count <= scheduler_client.CALLS_IN_FLIGHT

    async def test_a_report_with_piece_hashes_does_not_wait_for_a_slot(
        self, scheduler: Scheduler, tmp_path: Path
    ) -> None:
        """The lease holder's piece hashes are on every child's critical path: with this agent's
        shared connections busy they still go at once; a plain report waits its turn."""
        digest = f"sha256:{9:064x}"
        async with aiohttp.ClientSession() as session:
            client = SchedulerClient(session, [scheduler.url], None, tls=node_tls(tmp_path))
            assert (await client.join(digest, JoinRequest(ME, ME, 8 * MiB, MiB))).role == "fetcher"
            slots = scheduler_client._SLOTS[session][scheduler.url]
            for _ in range(scheduler_client.CALLS_IN_FLIGHT):
                await slots.acquire()  # as if two reports of other downloads were in flight
            plain = Report(ME, ME, pieces=1, contiguous=MiB, size=8 * MiB, piece_size=MiB)
            waiting = asyncio.create_task(client.report(digest, plain))
            try:
                hashed = Report(ME, ME, pieces=1, contiguous=MiB, hashes={0: "a" * 64}, size=8 * MiB, piece_size=MiB)
                view = await asyncio.wait_for(client.report(digest, hashed), 5)
                assert view.hashes_known == 1
                assert not waiting.done()
            finally:
                for _ in range(scheduler_client.CALLS_IN_FLIGHT):
                    slots.release()
            await waiting


class TestSlowHandshake:
    async def test_a_handshake_slower_than_the_old_connect_bound_is_waited_for(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A scheduler that accepts the connection but is slow to finish the TLS handshake (its
        accept queue behind a rollout's burst) is waited for within the call's bound: giving up
        early would leave it the handshake's work and queue the retry behind everyone else."""
        monkeypatch.setattr(scheduler_client, "CONNECT_TIMEOUT", 0.2)
        monkeypatch.setattr(scheduler_client, "TOTAL_TIMEOUT", 5.0)
        write_new_ca(tmp_path / "ca")
        server_tls = ServerTls(CaSource(tmp_path / "ca"), [], ["127.0.0.1"], datetime.timedelta(hours=1))
        answer = b'{"start": 0, "hashes": [], "total": 8}'

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(answer)}\r\n\r\n"
            writer.write(head.encode() + answer)
            await writer.drain()
            writer.close()

        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]

        async def accept_late() -> asyncio.Server:
            await asyncio.sleep(0.6)  # longer than the connect bound, well within the call's
            return await asyncio.start_server(serve, sock=listener, ssl=server_tls.context)

        late = asyncio.create_task(accept_late())  # meanwhile the connection waits in the accept queue
        try:
            async with aiohttp.ClientSession() as session:
                client = SchedulerClient(session, [f"https://127.0.0.1:{port}"], None, tls=node_tls(tmp_path))
                try:
                    view = await client.hashes(f"sha256:{1:064x}", 0)
                except SchedulerUnavailable as exc:
                    pytest.fail(f"the call gave up during the handshake: {exc}")
        finally:
            server = await late
            server.close()
            await server.wait_closed()
            server_tls.close()
        assert view.total == 8


class TestTickets:
    def test_the_scheduler_issues_no_session_tickets(self, tmp_path: Path) -> None:
        """Its clients (asyncio, aiohttp) cannot resume a TLS session: tickets would be work
        for nothing on every handshake."""
        write_new_ca(tmp_path / "ca")
        server_tls = ServerTls(CaSource(tmp_path / "ca"), [], ["127.0.0.1"], datetime.timedelta(hours=1))
        context = node_tls(tmp_path).context()
        c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
        client = context.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
        server = server_tls.context.wrap_bio(s_in, s_out, server_side=True)
        done = [False, False]
        for _ in range(10):
            for k, (end, out, into) in enumerate(((client, c_out, s_in), (server, s_out, c_in))):
                if not done[k]:
                    try:
                        end.do_handshake()
                        done[k] = True
                    except ssl.SSLWantReadError:
                        pass
                into.write(out.read())
        server.write(b"x")
        c_in.write(s_out.read())
        assert client.read(1) == b"x"  # past any ticket the server sent after the handshake
        server_tls.close()
        assert all(done)
        assert client.session is None or not client.session.has_ticket
