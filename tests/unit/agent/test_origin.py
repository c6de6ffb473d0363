"""Review h-review1: OriginSource._copy's two threads and the claims they leave behind."""

from __future__ import annotations

import asyncio
import http.client
import os
from pathlib import Path

import pytest

from shoal.agent.metrics import AgentMetrics
from shoal.agent.origin import OriginSource
from shoal.core.digest import Digest
from shoal.oci.blocking import Interrupt
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


async def copy(source: OriginSource, partial: PartialBlob, body: Body, pos: int) -> None:
    counter = AgentMetrics().origin_bytes.labels("reg")
    loop = asyncio.get_running_loop()
    await asyncio.to_thread(source._copy, body, partial, pos, 0, counter, Interrupt(), loop)  # type: ignore[arg-type]


class TestHasherFailureUnderANetworkError:
    async def test_a_hashing_failure_is_not_masked_by_the_broken_connection(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The hashing thread fails (an EIO re-reading an extent, say) on the registry's first
        response, whose connection then breaks: ``_copy`` raises the network error, so
        ``fill`` resumes from ``contiguous`` although the claim past it was never hashed.
        The resumed response's bytes for that range are dropped from the file (it is
        claimed) but hashed from memory: the file, already streamed to readers, holds the
        first response's (corrupt) bytes, the digest sees the second's, and the blob verifies."""
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
        with pytest.raises(Exception) as first:
            await copy(source, partial, Body(bytes(bad[:1000]), breaks=True), 0)
        # what fill() does next: a network error means "resume from contiguous"
        masked = isinstance(first.value, (OSError, http.client.HTTPException))
        if masked:
            assert partial.contiguous == 0
            await copy(source, partial, Body(DATA, breaks=False), partial.contiguous)
            try:
                partial.finish()
            except DigestMismatchError:
                return
            on_file = partial.path.read_bytes()
            partial.close()
            assert on_file == DATA, "VERIFIED, but the file holds the first response's bytes"
        assert not masked, f"the hasher's failure was masked by {first.value!r}: fill() would resume"
