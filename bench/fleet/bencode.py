"""Just enough bencode to find a torrent's info-hash (SHA-1 of the raw ``info`` value)."""

from __future__ import annotations

import hashlib

__all__ = ["BencodeError", "info_hash", "value_span"]


class BencodeError(ValueError):
    """Not valid bencode."""


def value_span(data: bytes, at: int) -> int:
    """Index just past the bencoded value that starts at ``at``."""
    if at >= len(data):
        raise BencodeError("truncated")
    lead = data[at : at + 1]
    if lead == b"i":
        end = data.find(b"e", at)
        if end < 0:
            raise BencodeError("unterminated integer")
        return end + 1
    if lead in (b"l", b"d"):
        at += 1
        while data[at : at + 1] != b"e":
            at = value_span(data, at)
        return at + 1
    if lead.isdigit():
        colon = data.find(b":", at)
        if colon < 0:
            raise BencodeError("string without length")
        end = colon + 1 + int(data[at:colon])
        if end > len(data):
            raise BencodeError("truncated string")
        return end
    raise BencodeError(f"unexpected byte {lead!r} at {at}")


def info_hash(torrent: bytes) -> str:
    """Hex SHA-1 of the ``info`` dictionary exactly as written in the file."""
    if torrent[:1] != b"d":
        raise BencodeError("a torrent is a dictionary")
    at = 1
    while torrent[at : at + 1] != b"e":
        key_end = value_span(torrent, at)
        key = torrent[torrent.index(b":", at) + 1 : key_end]
        value_end = value_span(torrent, key_end)
        if key == b"info":
            return hashlib.sha1(torrent[key_end:value_end]).hexdigest()
        at = value_end
    raise BencodeError("no info dictionary")
