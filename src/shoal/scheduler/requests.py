"""Request bodies and parameters from the network, checked field by field: bad input is a 400 with the reason.

Every number is bounded here (``MAX_INT``) and every string and list has a length limit, so
the state machine only ever sees small values; it then checks them against the task (sizes
against ``max_blob_size``, the piece size against the agents' rule, indexes against the
piece count).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from shoal.p2p.protocol import JoinRequest, Report, from_json

MAX_ID = 256
"""characters in a peer id or an address."""
ID_RE = re.compile(r"[!-~]+")
"""printable ASCII without spaces: agents use their HOST:PORT; ids end up in log lines."""
MAX_INT = (1 << 53) - 1
"""largest integer in a body (the largest that every JSON reader keeps exact)."""
MAX_HASHES = 1 << 16
"""piece hashes in one report (a 1 TiB blob has 65,536 pieces of 16 MiB)."""
MAX_FAILED_PARENTS = 1024
"""peer ids in one report's ``failed_parents``."""
MAX_QUERY = 32
"""characters of a bad query parameter quoted back in the error."""
DIGITS_RE = re.compile(r"[0-9]{1,16}")
SECONDS_RE = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6})?")


class BadRequest(ValueError):
    """A body or parameter the API cannot accept."""


def _int(name: str, value: int, minimum: int = 0) -> None:
    if not minimum <= value <= MAX_INT:
        shown = value if value.bit_length() < 64 else f"an integer of {value.bit_length()} bits"
        raise BadRequest(f"{name}: want an integer in {minimum}..{MAX_INT}, not {shown}")


def _id(name: str, value: str) -> None:
    if not value or len(value) > MAX_ID or not ID_RE.fullmatch(value):
        raise BadRequest(f"{name}: want a non-empty string of at most {MAX_ID} printable ASCII characters")


def _address(value: str) -> None:
    _id("address", value)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not DIGITS_RE.fullmatch(port) or not 0 < int(port) < 65536:
        raise BadRequest(f"address: want HOST:PORT, not {value[:MAX_ID]!r}")


def _build(cls: type[Any], data: Any) -> Any:
    try:
        return from_json(cls, data)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def parse_join(data: Any) -> JoinRequest:
    req: JoinRequest = _build(JoinRequest, data)
    _id("peer_id", req.peer_id)
    _address(req.address)
    _int("size", req.size)
    _int("piece_size", req.piece_size, 1)
    _int("pieces", req.pieces)
    return req


def parse_report(data: Any) -> Report:
    if isinstance(data, dict):
        # lengths before the field-by-field build, which would walk them
        hashes, failed = data.get("hashes", {}), data.get("failed_parents", [])
        if isinstance(hashes, dict) and len(hashes) > MAX_HASHES:
            raise BadRequest(f"hashes: at most {MAX_HASHES} per report, not {len(hashes)}")
        if isinstance(failed, list) and len(failed) > MAX_FAILED_PARENTS:
            raise BadRequest(f"failed_parents: at most {MAX_FAILED_PARENTS} peer ids, not {len(failed)}")
    rep: Report = _build(Report, data)
    _id("peer_id", rep.peer_id)
    _address(rep.address)
    _int("pieces", rep.pieces)
    _int("contiguous", rep.contiguous)
    _int("size", rep.size)
    _int("piece_size", rep.piece_size)
    for index in rep.hashes:
        _int("hashes index", index)
    for peer_id in rep.failed_parents:
        _id("failed_parents[]", peer_id)
    return rep


def parse_leave(data: Any) -> str:
    if not isinstance(data, dict) or set(data) != {"peer_id"} or not isinstance(data["peer_id"], str):
        raise BadRequest('leave: want {"peer_id": "..."}')
    peer_id: str = data["peer_id"]
    _id("peer_id", peer_id)
    return peer_id


def parse_hashes_query(query: Mapping[str, str], max_wait: float) -> tuple[int, float]:
    """(from, wait) of ``GET .../hashes?from=N&wait=S``: a piece index, and seconds capped at ``max_wait``."""
    start, wait = query.get("from", "0"), query.get("wait", "0")
    if not DIGITS_RE.fullmatch(start):
        raise BadRequest(f"from: want a piece index (decimal digits), not {start[:MAX_QUERY]!r}")
    if not SECONDS_RE.fullmatch(wait):
        raise BadRequest(f"wait: want seconds (like 5 or 2.5), not {wait[:MAX_QUERY]!r}")
    return int(start), min(max_wait, float(wait))
