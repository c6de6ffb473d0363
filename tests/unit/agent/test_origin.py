"""OriginSource._copy's two threads (receiving, hashing) and the claims they leave behind."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from shoal.agent import origin
from shoal.agent.metrics import AgentMetrics
from shoal.agent.origin import OriginSource
from shoal.core.digest import Digest
from shoal.oci.blocking import Interrupt, InterruptedTransfer
from shoal.p2p.ratelimit import TokenBucket
from shoal.store.partial import DigestMismatchError, PartialBlob

DATA = os.urandom(10_000)


class Body:
    """A response body: ``data``, then a broken connection (or the end)."""

    def __init__(self, data: bytes, *, breaks: bool) -> None:
        self.data, self.pos, self.breaks = data, 0, breaks

    def readinto(self, buf: memoryview) -> int:
        if self.pos == len(self.data):
            if self.breaks:
                raise ConnectionResetError("registry went away")
            return 0
        n = min(len(buf), len(self.data) - self.pos)
        buf[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


async def copy(
    source: OriginSource, partial: PartialBlob, body: Body, pos: int, interrupt: Interrupt | None = None
) -> None:
    counter = AgentMetrics().origin_bytes.labels("reg")
    loop = asyncio.get_running_loop()
    stop = interrupt or Interrupt()
    await asyncio.to_thread(source._copy, body, partial, pos, 0, counter, stop, loop)  # type: ignore[arg-type]


class TestAFetchEndsWithNoClaimLeft:
    async def test_a_hashing_failure_is_not_masked_by_the_broken_connection(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The hashing thread fails (an EIO re-reading an extent, say) on the registry's first
        response, whose connection then breaks. Raising the network error would have ``fill``
        resume from ``contiguous`` below the claim never hashed: the resumed response's bytes
        for that range dropped from the file (it is claimed) but hashed from memory, so the
        file, already streamed to readers, would hold bytes the digest never saw. The
        hashing's failure is raised, and the claim is hashed from the file all the same."""
        source = OriginSource(None, None, None)  # type: ignore[arg-type]
        partial = PartialBlob(Digest.of(DATA), tmp_path / "blob.tmp", len(DATA))
        bad = bytearray(DATA)
        bad[500] ^= 0xFF
        real = partial.advance_in_thread
        calls = [0]

        def advance_failing_once(offset: int, data: memoryview) -> None:
            calls[0] += 1
            if calls[0] == 1:
                raise OSError(5, "Input/output error")
            real(offset, data)

        monkeypatch.setattr(partial, "advance_in_thread", advance_failing_once)
        with pytest.raises(origin._WriteFailed):  # fill() fails the blob, never resumes it
            await copy(source, partial, Body(bytes(bad[:1000]), breaks=True), 0)
        # and were it resumed, it would start after the bytes readers got, which the digest saw
        assert partial.contiguous == 1000
        await copy(source, partial, Body(DATA[1000:], breaks=False), partial.contiguous)
        assert partial.path.read_bytes() == bad
        with pytest.raises(DigestMismatchError):
            partial.finish()

    async def test_a_fetch_stopped_while_hashing_waits_leaves_no_stale_claim(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The swarm stops our origin fetch (``StopOriginFetch``) while its hashing thread
        waits for the rate limit: the claims it queued were put on file, and streamed to
        readers, but never hashed. The blob stays RUNNING for the swarm's pieces: those must
        not be dropped behind a stale claim (the prefix would never move again), nor replace
        the bytes readers were sent (the digest would check bytes no reader got)."""
        monkeypatch.setattr(origin, "BUFFER", 1000)
        bad = bytearray(DATA)
        bad[2500] ^= 0xFF  # in a claim the hashing never gets to
        source = OriginSource(None, None, None, TokenBucket(rate=100, burst=1000))  # type: ignore[arg-type]
        partial = PartialBlob(Digest.of(DATA), tmp_path / "blob.tmp", len(DATA))
        interrupt = Interrupt()
        fetch = asyncio.ensure_future(copy(source, partial, Body(bytes(bad[:5000]), breaks=False), 0, interrupt))
        for _ in range(500):  # two claims hashed, two more on file, the hashing waiting
            if partial.contiguous == 2000 and partial.readable_limit() >= 3999:
                break
            await asyncio.sleep(0.01)
        streamed = partial.path.read_bytes()[:3999]
        assert streamed == bad[:3999]
        interrupt.fire()
        with pytest.raises(InterruptedTransfer):
            await asyncio.wait_for(fetch, 5)
        # the swarm writes the whole blob, good pieces all
        await partial.write(0, DATA)
        assert partial.contiguous == len(DATA), "the prefix is stuck behind a stale claim"
        assert partial.path.read_bytes()[:3999] == streamed, "the bytes readers got were replaced"
        with pytest.raises(DigestMismatchError):  # the digest saw the bytes readers got
            partial.finish()
