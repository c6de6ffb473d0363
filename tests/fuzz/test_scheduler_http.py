"""The scheduler's HTTP API under hostile requests: never a 500, whatever the bytes.

A real ``Scheduler`` serves on 127.0.0.1 (its own event loop in a thread); the cases are raw
request bodies, digests and query strings sent over one keep-alive connection.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urlsplit

from hypothesis import example, given
from hypothesis import strategies as st

from shoal.scheduler.config import SchedulerConfig
from shoal.scheduler.server import Scheduler

from .harness import counted, fuzzed
from .strategies import bodies
from .test_scheduler_requests import JOIN, REPORT

TOKEN = "fuzz-token"
DIGEST = "sha256:" + "d" * 64
ANSWERS = {200, 400, 404, 409, 413, 503}
"""what the API may answer (405 is not possible: only routed methods are sent)."""


@contextmanager
def serving() -> Iterator[tuple[str, int, Scheduler]]:
    """A scheduler on an ephemeral port, served from its own event loop thread."""
    loop = asyncio.new_event_loop()
    # max_wait: a hashes long-poll returns within a millisecond, whatever ``wait`` says
    node = Scheduler(SchedulerConfig(listen="127.0.0.1:0", peer_token=TOKEN, max_tasks=50, max_wait=0.001))

    def run_loop() -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    thread = threading.Thread(target=run_loop, daemon=True)
    thread.start()
    url = asyncio.run_coroutine_threadsafe(node.start(), loop).result(10)
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    try:
        yield parts.hostname, parts.port, node
    finally:
        asyncio.run_coroutine_threadsafe(node.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


class Client:
    """One keep-alive connection, reopened when the server closes it (after a 400, say)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.conn = http.client.HTTPConnection(host, port, timeout=10)

    def send(self, method: str, path: str, body: bytes | None) -> int:
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                resp.read()
                if resp.will_close:
                    self.reopen()
                return resp.status
            except (http.client.HTTPException, ConnectionError):
                self.reopen()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def reopen(self) -> None:
        self.conn.close()
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)

    def close(self) -> None:
        self.conn.close()


def encoded(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


raw_bodies = (
    (bodies(JOIN) | bodies(REPORT)).map(encoded)
    | st.binary(max_size=200)
    | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass"))
    | st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n)
)
digests = st.just(DIGEST) | st.text(max_size=80)
queries = st.dictionaries(st.sampled_from(["from", "wait", "x"]), st.text(max_size=20), max_size=3)
routes = st.sampled_from(["join", "report", "leave", "hashes"])


def test_hostile_requests() -> None:
    with serving() as (host, port, node):
        client = Client(host, port)

        @fuzzed
        @given(routes, digests, raw_bodies, queries)
        @example("join", DIGEST, b'{"peer_id": "a", "address": "h:1", "size": 1' + b"0" * 5000 + b"}", {})
        @example("join", DIGEST, b"[" * 100_000 + b"]" * 100_000, {})
        @example("report", DIGEST, b'{"peer_id": "\xff"}', {})
        @example("join", DIGEST, encoded({**JOIN, "size": 10**20, "piece_size": 1}), {})
        @example("hashes", DIGEST, None, {"from": "9" * 5000, "wait": "1e999"})
        @counted("scheduler HTTP")
        def case(route: str, digest: str, body: bytes | None, query: dict[str, str]) -> None:
            path = f"/v1/tasks/{quote(digest, safe='')}/{route}"
            if route == "hashes":
                status = client.send("GET", f"{path}?{'&'.join(f'{k}={quote(v)}' for k, v in query.items())}", None)
            else:
                status = client.send("POST", path, body)
            assert status in ANSWERS, (route, digest, body, query, status)
            for task in node.state.tasks.values():
                assert len(task.hashes) in (0, task.total)

        try:
            case()
        finally:
            client.close()
