"""A file range read in chunks: whole, in order, and never silently short."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shoal.store.file_range import file_chunks


def test_the_range_comes_whole_in_chunks(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    path = tmp_path / "blob"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = list(file_chunks(fd, 100, 9_100, 4096))
    finally:
        os.close(fd)
    assert [len(c) for c in chunks] == [4096, 4096, 808]
    assert b"".join(chunks) == data[100:9_100]


def test_a_file_shorter_than_the_range_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 100)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OSError, match="short read at 100 of 200"):
            list(file_chunks(fd, 0, 200, 64))
    finally:
        os.close(fd)
