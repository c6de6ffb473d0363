"""PartialBlob: readers stream the verified prefix while the writer is still writing."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import itertools
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shoal.core.digest import Digest
from shoal.store.partial import DigestMismatchError, PartialBlob, PartialState

DATA = bytes(range(256)) * 40  # 10 KiB


def new_partial(
    tmp_path: Path, data: bytes = DATA, *, size: int | None = None, digest: Digest | None = None
) -> PartialBlob:
    return PartialBlob(digest or Digest.of(data), tmp_path / "blob.tmp", size)


async def read_all(partial: PartialBlob, start: int, end: int, into: bytearray) -> None:
    async for chunk in partial.iter_range(start, end):
        into += chunk


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


class TestReadersFollowTheWriter:
    """A reader gets each byte as soon as it is written, except the last one."""

    async def test_stream_then_last_byte_after_verification(self, tmp_path: Path) -> None:
        partial = new_partial(tmp_path, size=len(DATA))
        got = bytearray()
        reader = asyncio.create_task(read_all(partial, 0, len(DATA), got))
        await partial.write(0, DATA[:4096])
        await settle()
        assert bytes(got) == DATA[:4095]  # the prefix, minus the byte held back
        await partial.write(4096, DATA[4096:])
        await settle()
        assert bytes(got) == DATA[:-1]  # the last byte waits for the digest check
        assert partial.readable_limit() == len(DATA) - 1
        assert not reader.done()
        partial.finish()
        await asyncio.wait_for(reader, 5)
        assert bytes(got) == DATA
        assert partial.state is PartialState.VERIFIED
        partial.close()

    async def test_ranged_reader(self, tmp_path: Path) -> None:
        partial = new_partial(tmp_path, size=len(DATA))
        got = bytearray()
        reader = asyncio.create_task(read_all(partial, 100, 200, got))
        await partial.write(0, DATA[:150])
        await settle()
        assert bytes(got) == DATA[100:149]
        await partial.write(150, DATA[150:])
        await asyncio.wait_for(reader, 5)  # ends before the held-back last byte
        assert bytes(got) == DATA[100:200]
        partial.finish()
        partial.close()

    async def test_size_learned_later(self, tmp_path: Path) -> None:
        partial = new_partial(tmp_path)
        assert not partial.size_known.done()
        partial.set_size(len(DATA))
        assert await partial.size_known == len(DATA)
        with pytest.raises(ValueError, match="size changed"):
            partial.set_size(len(DATA) + 1)
        partial.close()


class TestOutOfOrderWrites:
    """Extents written ahead of the prefix are absorbed (and hashed) once the gap fills."""

    async def test_absorb(self, tmp_path: Path) -> None:
        partial = new_partial(tmp_path, size=len(DATA))
        await partial.write(8192, DATA[8192:])
        await partial.write(2048, DATA[2048:4096])
        assert partial.contiguous == 0
        assert partial.has(8192, len(DATA) - 8192)
        assert partial.has(2048, 1024)
        assert not partial.has(0, 1)
        await partial.write(0, DATA[:2048])
        assert partial.contiguous == 4096
        await partial.write(4096, DATA[4096:8192])
        assert partial.contiguous == len(DATA)
        partial.finish()
        assert partial.state is PartialState.VERIFIED
        assert partial.path.read_bytes() == DATA
        partial.close()

    async def test_piece_hashes(self, tmp_path: Path) -> None:
        partial = new_partial(tmp_path, size=len(DATA))
        partial.set_piece_size(4096)
        await partial.write(4096, DATA[4096:])
        await partial.write(0, DATA[:4096])
        pieces = [DATA[i : i + 4096] for i in range(0, len(DATA), 4096)]
        assert partial.piece_hashes == {i: hashlib.sha256(p).hexdigest() for i, p in enumerate(pieces)}
        partial.finish()
        partial.close()

    async def test_piece_watchers_wake_per_piece_not_per_write(self, tmp_path: Path) -> None:
        partial = new_partial(tmp_path, size=len(DATA))
        partial.set_piece_size(4096)
        woken: list[int] = []

        async def watch() -> None:
            while partial.state is PartialState.RUNNING:
                await partial.pieces_changed().wait()
                woken.append(partial.contiguous)

        watcher = asyncio.create_task(watch())
        for offset in range(0, len(DATA), 1024):  # ten 1 KiB writes: pieces end at 4 and 8 KiB
            await partial.write(offset, DATA[offset : offset + 1024])
            await settle()
        partial.finish()
        await settle()
        assert woken == [4096, 8192, len(DATA), len(DATA)]  # two pieces, the short last one, verified
        await watcher
        partial.close()

    async def test_write_past_end_refused(self, tmp_path: Path) -> None:
        partial = new_partial(tmp_path, size=10)
        with pytest.raises(ValueError, match="past the end"):
            await partial.write(5, b"123456")
        partial.close()


class TestFailures:
    """A wrong or short blob fails every reader and leaves no file behind."""

    async def test_digest_mismatch_fails_readers(self, tmp_path: Path) -> None:
        wrong = bytearray(DATA)
        wrong[-10] ^= 0xFF
        partial = new_partial(tmp_path, size=len(DATA), digest=Digest.of(DATA))
        got = bytearray()
        reader = asyncio.create_task(read_all(partial, 0, len(DATA), got))
        await partial.write(0, bytes(wrong))
        await settle()
        with pytest.raises(DigestMismatchError):
            partial.finish()
        with pytest.raises(DigestMismatchError):
            await asyncio.wait_for(reader, 5)
        assert len(got) < len(DATA)  # the reader never saw a complete (wrong) blob
        assert partial.state is PartialState.FAILED
        assert not partial.path.exists()
        with pytest.raises(RuntimeError, match="failed"):
            await partial.write(0, b"x")

    async def test_incomplete_finish(self, tmp_path: Path) -> None:
        partial = new_partial(tmp_path, size=len(DATA))
        await partial.write(0, DATA[:100])
        with pytest.raises(ValueError, match="incomplete"):
            partial.finish()
        assert partial.state is PartialState.FAILED
        assert not partial.path.exists()

    async def test_fail_before_size_known(self, tmp_path: Path) -> None:
        partial = new_partial(tmp_path)
        partial.fail(ConnectionError("upstream died"))
        with pytest.raises(ConnectionError):
            await partial.size_known
        with pytest.raises(ConnectionError):
            partial.readable_limit()
        assert not partial.path.exists()

    async def test_reader_fd_survives_rename(self, tmp_path: Path) -> None:
        partial = new_partial(tmp_path, size=len(DATA))
        await partial.write(0, DATA)
        got = bytearray()
        reader = asyncio.create_task(read_all(partial, 0, len(DATA), got))
        await settle()
        final = tmp_path / "final"
        os.replace(partial.path, final)
        partial.path = final
        partial.finish()
        partial.close()
        await asyncio.wait_for(reader, 5)
        assert bytes(got) == DATA


class TestLateWrites:
    """A write below the verified prefix (a slow parent's piece after the origin fetch went
    past it) cannot change bytes the digest was computed over."""

    async def test_late_write_below_the_prefix_is_dropped(self, tmp_path: Path) -> None:
        partial = new_partial(tmp_path, size=len(DATA))
        await partial.write(0, DATA[:6000])
        await partial.write(2048, b"\xff" * 2048)  # wholly below contiguous
        await partial.write(5000, b"\xee" * 1000 + DATA[6000:7000])  # straddles it
        await partial.write(7000, DATA[7000:])
        partial.finish()
        assert partial.state is PartialState.VERIFIED
        assert partial.path.read_bytes() == DATA
        partial.close()

    async def test_failed_prefix_matches_the_file(self, tmp_path: Path) -> None:
        """The digest state kept at a failure covers exactly the bytes on file."""
        partial = new_partial(tmp_path, size=len(DATA))
        await partial.write(0, DATA[:3000])
        reader = os.open(partial.path, os.O_RDONLY)
        partial.fail(OSError("disk full"))
        assert partial.failed_prefix is not None
        on_file, hasher = partial.failed_prefix
        assert on_file == 3000
        assert hasher.hexdigest() == hashlib.sha256(os.pread(reader, on_file, 0)).hexdigest()
        os.close(reader)


class TestClaimedWrites:
    """An in-order writer in its own thread (the origin fetch) puts bytes on file first and
    hashes them later: until then its range is its own. Readers of the whole blob stream it
    as soon as it is on file (the last byte still waits for the digest); peers, who are
    served verified pieces only, do not see it."""

    async def test_claim_then_advance(self, tmp_path: Path) -> None:
        partial = new_partial(tmp_path, size=len(DATA))
        changed = partial.changed()
        await asyncio.to_thread(partial.claim_in_thread, 0, DATA[:4000])
        await asyncio.wait_for(changed.wait(), 1)  # the loop was told, from the thread
        assert partial.contiguous == 0
        assert partial.readable_limit() == 3999  # on file: streamed before it is hashed
        assert not partial.has(0, 4000)  # but not a verified range for peers
        changed = partial.changed()
        await asyncio.to_thread(partial.advance_in_thread, 0, DATA[:4000])
        assert partial.contiguous == 4000
        await asyncio.wait_for(changed.wait(), 1)
        assert partial.readable_limit() == 3999
        await asyncio.to_thread(partial.claim_in_thread, 4000, DATA[4000:])
        await asyncio.to_thread(partial.advance_in_thread, 4000, DATA[4000:])
        partial.finish()
        assert partial.path.read_bytes() == DATA
        partial.close()

    async def test_other_writes_into_a_claimed_range_are_dropped(self, tmp_path: Path) -> None:
        """A swarm piece landing where the origin fetch wrote but has not hashed yet would
        make the file differ from what the digest sees: it is dropped, and one beyond the
        claim is kept as an extent and absorbed."""
        partial = new_partial(tmp_path, size=len(DATA))
        await asyncio.to_thread(partial.claim_in_thread, 0, DATA[:6000])
        await partial.write(2000, b"\xff" * 5000)  # 2000..6000 claimed, 6000..7000 is news
        assert partial.has(6000, 1000)
        await asyncio.to_thread(partial.advance_in_thread, 0, DATA[:6000])
        assert partial.contiguous == 7000  # the extent was absorbed (re-read from the file)
        assert partial.path.read_bytes()[:7000] == DATA[:6000] + b"\xff" * 1000
        await partial.write(7000, DATA[7000:])
        with pytest.raises(DigestMismatchError):
            partial.finish()

    async def test_whole_claim_on_file_still_holds_back_the_last_byte(self, tmp_path: Path) -> None:
        partial = new_partial(tmp_path, size=len(DATA))
        got = bytearray()
        reader = asyncio.create_task(read_all(partial, 0, len(DATA), got))
        await asyncio.to_thread(partial.claim_in_thread, 0, DATA)
        await settle()
        assert bytes(got) == DATA[:-1]
        assert not reader.done()
        await asyncio.to_thread(partial.advance_in_thread, 0, DATA)
        partial.finish()
        await asyncio.wait_for(reader, 5)
        assert bytes(got) == DATA
        partial.close()

    async def test_a_claim_is_readable_only_once_written(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The claim is taken before its write: a reader must not see the range until the
        write has returned (it would read a hole of zeros)."""
        partial = new_partial(tmp_path, size=len(DATA))
        seen: list[int] = []
        original = PartialBlob._pwrite

        def observing(fd: int, view: memoryview, offset: int) -> None:
            seen.append(partial.readable_limit())
            original(fd, view, offset)

        monkeypatch.setattr(PartialBlob, "_pwrite", staticmethod(observing))
        await asyncio.to_thread(partial.claim_in_thread, 0, DATA[:4000])
        assert seen == [0]
        assert partial.readable_limit() == 3999

    async def test_readers_never_pass_a_claim_still_being_written(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Two claims whose writes return out of order: the later one on file does not make
        the earlier one, still a hole, readable."""
        partial = new_partial(tmp_path, size=len(DATA))
        first_writing, release = threading.Event(), threading.Event()
        original = PartialBlob._pwrite

        def slow_first(fd: int, view: memoryview, offset: int) -> None:
            if offset == 0:
                first_writing.set()
                release.wait(5)
            original(fd, view, offset)

        monkeypatch.setattr(PartialBlob, "_pwrite", staticmethod(slow_first))
        first = asyncio.ensure_future(asyncio.to_thread(partial.claim_in_thread, 0, DATA[:4000]))
        assert await asyncio.to_thread(first_writing.wait, 5)
        await asyncio.to_thread(partial.claim_in_thread, 4000, DATA[4000:8000])
        assert partial.readable_limit() == 0
        release.set()
        await first
        assert partial.readable_limit() == 7999

    async def test_a_failed_write_leaves_its_claim_unreadable(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        partial = new_partial(tmp_path, size=len(DATA))

        def failing(fd: int, view: memoryview, offset: int) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(PartialBlob, "_pwrite", staticmethod(failing))
        with pytest.raises(OSError, match="No space left"):
            await asyncio.to_thread(partial.claim_in_thread, 0, DATA[:4000])
        assert partial.readable_limit() == 0

    async def test_a_claim_goes_on_file_while_the_previous_one_is_hashed(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Receiving and writing the next buffer overlap with hashing the last one: the
        hashing must not hold the lock a claim takes (the two used to take turns)."""
        partial = new_partial(tmp_path, size=len(DATA))
        hashing, release = threading.Event(), threading.Event()
        real = partial._hasher

        class SlowHash:
            def update(self, data: bytes | memoryview) -> None:
                hashing.set()
                release.wait(5)
                real.update(data)

            def hexdigest(self) -> str:
                return real.hexdigest()

            def copy(self) -> object:
                return real.copy()

        monkeypatch.setattr(partial, "_hasher", SlowHash())
        await asyncio.to_thread(partial.claim_in_thread, 0, DATA[:4000])
        advancing = asyncio.ensure_future(asyncio.to_thread(partial.advance_in_thread, 0, DATA[:4000]))
        assert await asyncio.to_thread(hashing.wait, 5)
        claim = asyncio.ensure_future(asyncio.to_thread(partial.claim_in_thread, 4000, DATA[4000:]))
        done, _ = await asyncio.wait({claim}, timeout=2)
        release.set()
        assert claim in done
        await advancing
        assert partial.readable_limit() == len(DATA) - 1
        await asyncio.to_thread(partial.advance_in_thread, 4000, DATA[4000:])
        partial.finish()
        assert partial.path.read_bytes() == DATA
        partial.close()

    async def test_claim_after_a_failure_is_refused(self, tmp_path: Path) -> None:
        partial = new_partial(tmp_path, size=len(DATA))
        partial.fail(OSError("disk full"))
        with pytest.raises(RuntimeError):
            await asyncio.to_thread(partial.claim_in_thread, 0, DATA[:100])


class TestClaimsOverPiecesWrittenAhead:
    """The digest must see exactly the bytes the file (and its readers) hold, and peers get
    only pieces whose bytes are still on file."""

    async def test_absorbing_an_extent_does_not_hash_through_a_claim_still_being_written(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The swarm gave up with a verified piece beyond the prefix (an extent); the origin
        fallback claims [0, 4000) and then [4000, 8000), where the registry corrupts a byte.
        Hashing the first claim absorbs the extent by re-reading the file, straight through
        the second claim whose write has not landed yet: the digest sees the piece's good
        bytes, the file (and every reader) gets the registry's bad ones, and the blob is
        VERIFIED with content that does not match its digest."""
        bad = bytearray(DATA)
        bad[5000] ^= 0xFF
        partial = new_partial(tmp_path, size=len(DATA))
        got = bytearray()
        reader = asyncio.create_task(read_all(partial, 0, len(DATA), got))
        await partial.write(4000, DATA[4000:8000])  # a verified piece beyond the prefix
        second_writing, release = threading.Event(), threading.Event()
        original = PartialBlob._pwrite

        def slow_second(fd: int, view: memoryview, offset: int) -> None:
            if offset == 4000 and bytes(view[1000:1001]) == bytes(bad[5000:5001]):
                second_writing.set()
                release.wait(5)
            original(fd, view, offset)

        monkeypatch.setattr(PartialBlob, "_pwrite", staticmethod(slow_second))
        await asyncio.to_thread(partial.claim_in_thread, 0, DATA[:4000])
        second = asyncio.ensure_future(asyncio.to_thread(partial.claim_in_thread, 4000, bytes(bad[4000:8000])))
        assert await asyncio.to_thread(second_writing.wait, 5)
        # the hasher thread gets to the first claim while the receiver still writes the second
        await asyncio.to_thread(partial.advance_in_thread, 0, DATA[:4000])
        release.set()
        await second
        await asyncio.to_thread(partial.advance_in_thread, 4000, bytes(bad[4000:8000]))
        await partial.write(8000, DATA[8000:])
        try:
            partial.finish()
        except DigestMismatchError:
            return  # fine: the wrong byte was caught
        await asyncio.wait_for(reader, 5)
        on_file = partial.path.read_bytes()
        partial.close()
        assert on_file == DATA, "VERIFIED, but the file holds bytes the digest never saw"
        assert bytes(got) == DATA, "a reader finished a wrong blob"

    async def test_a_piece_overwritten_by_a_claim_is_not_offered_to_peers(self, tmp_path: Path) -> None:
        """A verified piece beyond the prefix (an extent) that an origin claim then covers
        holds the claim's unhashed bytes on file; ``has`` still offers it to peers."""
        bad = bytearray(DATA)
        bad[5000] ^= 0xFF
        partial = new_partial(tmp_path, size=len(DATA))
        await partial.write(4000, DATA[4000:8000])  # a verified piece, offered to peers
        assert partial.has(4000, 4000)
        await asyncio.to_thread(partial.claim_in_thread, 0, bytes(bad[:8000]))  # not hashed yet
        on_file = partial.path.read_bytes()[4000:8000]
        assert not partial.has(4000, 4000) or on_file == DATA[4000:8000], "peers get unhashed bytes"
        partial.close()


class TestSettlingClaims:
    """A claimant that stops before hashing all it claimed leaves no claim behind."""

    async def test_what_landed_is_hashed_from_the_file_and_the_rest_given_back(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        bad = bytearray(DATA)
        bad[1500] ^= 0xFF
        partial = new_partial(tmp_path, size=len(DATA))
        await asyncio.to_thread(partial.claim_in_thread, 0, DATA[:1000])
        await asyncio.to_thread(partial.claim_in_thread, 1000, bytes(bad[1000:2000]))  # read, never hashed
        original = PartialBlob._pwrite

        def failing_at_2000(fd: int, view: memoryview, offset: int) -> None:
            if offset == 2000:
                raise OSError(5, "Input/output error")
            original(fd, view, offset)

        monkeypatch.setattr(PartialBlob, "_pwrite", staticmethod(failing_at_2000))
        with pytest.raises(OSError, match="Input/output"):
            await asyncio.to_thread(partial.claim_in_thread, 2000, DATA[2000:3000])
        assert partial.readable_limit() == 1999
        await asyncio.to_thread(partial.settle_claims_in_thread)
        assert partial.contiguous == 2000  # the landed claims, from the file: what readers got
        monkeypatch.setattr(PartialBlob, "_pwrite", staticmethod(original))
        await partial.write(0, DATA)  # the next writer: its bytes from 2000 on count
        assert partial.contiguous == len(DATA)
        assert partial.path.read_bytes() == bad
        with pytest.raises(DigestMismatchError):
            partial.finish()


class TestPieceHashesBesideTheDigest:
    """With pieces to hash, a large run's blob digest is hashed by a helper thread while the
    writer's thread hashes the pieces; the prefix moves only once both are done."""

    PIECE = 96 << 10
    BIG = bytes(hashlib.shake_256(b"pieces").digest(5 * PIECE + 12345))

    async def test_claimed_runs_across_pieces_give_every_hash_and_the_digest(self, tmp_path: Path) -> None:
        data = self.BIG
        partial = new_partial(tmp_path, data, size=len(data))
        partial.set_piece_size(self.PIECE)
        cuts = [0, 200 << 10, 201 << 10, 450 << 10, len(data)]  # runs large and small, off piece boundaries
        for start, stop in itertools.pairwise(cuts):
            await asyncio.to_thread(partial.claim_in_thread, start, data[start:stop])
            await asyncio.to_thread(partial.advance_in_thread, start, data[start:stop])
        expected = {
            i: hashlib.sha256(data[i * self.PIECE : (i + 1) * self.PIECE]).hexdigest()
            for i in range(-(-len(data) // self.PIECE))
        }
        assert partial.piece_hashes == expected
        partial.finish()
        assert partial.state is PartialState.VERIFIED
        partial.close()

    async def test_a_wrong_byte_in_a_large_run_still_fails_the_blob(self, tmp_path: Path) -> None:
        bad = bytearray(self.BIG)
        bad[400 << 10] ^= 0x01
        partial = new_partial(tmp_path, self.BIG, size=len(bad))
        partial.set_piece_size(self.PIECE)
        await partial.write(0, bytes(bad))
        with pytest.raises(DigestMismatchError):
            partial.finish()
        assert partial.state is PartialState.FAILED

    async def test_the_prefix_never_runs_ahead_of_the_digest(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Whoever sees the whole prefix (the download's owner, then ``finish``) must find
        the digest over all of it, however late the helper thread hashes."""
        import shoal.store.partial as partial_mod

        data = self.BIG
        partial = new_partial(tmp_path, data, size=len(data))
        partial.set_piece_size(self.PIECE)
        started = threading.Event()
        seen: list[tuple[int, str]] = []
        done = threading.Event()

        class SlowPool:
            def submit(self, fn: Callable[[memoryview], None], arg: memoryview) -> concurrent.futures.Future[None]:
                future: concurrent.futures.Future[None] = concurrent.futures.Future()

                def late() -> None:
                    started.set()
                    time.sleep(0.3)
                    fn(arg)
                    future.set_result(None)

                threading.Thread(target=late).start()
                return future

        def watch() -> None:
            started.wait(5)
            while True:
                finished = done.is_set()
                at = partial.contiguous
                if at:  # what the digest holds when the prefix is first seen to have moved
                    seen.append((at, partial._hasher.copy().hexdigest()))
                    return
                if finished:
                    return
                time.sleep(0.001)

        monkeypatch.setattr(partial_mod, "_digest_pool", SlowPool)
        watcher = threading.Thread(target=watch)
        watcher.start()
        await partial.write(0, data)
        done.set()
        watcher.join()
        assert seen == [(len(data), hashlib.sha256(data).hexdigest())]
        partial.finish()
        partial.close()
