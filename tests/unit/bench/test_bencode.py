"""Info-hash of a torrent: SHA-1 of the raw info dictionary."""

from __future__ import annotations

import hashlib

import pytest
from bench.fleet.bencode import BencodeError, info_hash, value_span

INFO = b"d6:lengthi5e4:name1:a12:piece lengthi16384e6:pieces20:" + b"x" * 20 + b"e"
TORRENT = b"d8:announce9:http://t/4:info" + INFO + b"e"


class TestInfoHash:
    """The info value's exact bytes are hashed, whatever precedes it."""

    def test_hashes_info_bytes(self) -> None:
        assert info_hash(TORRENT) == hashlib.sha1(INFO).hexdigest()

    def test_nested_lists_and_dicts(self) -> None:
        assert value_span(b"ld1:ai1eeli2eee", 0) == 15

    @pytest.mark.parametrize("data", [b"", b"le", b"d3:fooi1ee", b"d4:info5:abe"])
    def test_rejects(self, data: bytes) -> None:
        with pytest.raises(BencodeError):
            info_hash(data)
