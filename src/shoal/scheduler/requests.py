"""Request bodies and parameters from the network, checked field by field: bad input is a 400 with the reason.

Every number is bounded here (``MAX_INT``) and every string and list has a length limit, so
the state machine only ever sees small values; it then checks them against the task (sizes
against ``max_blob_size``, the piece size against the agents' rule, indexes against the
piece count).

The join and report bodies are the hot path of the scheduler, so they are built field by
field here (type and bound in one check) rather than through the generic reflective
``shoal.p2p.protocol.from_json``; they accept what it accepts, minus out-of-bound values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import MISSING, fields
from typing import Any

from shoal.p2p.presence import plain_hostport
from shoal.p2p.protocol import INDEX_RE, JoinRequest, Report

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


def _shown(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() >= 64:
        return f"an integer of {value.bit_length()} bits"
    small = value is None or isinstance(value, bool | int | float) or (isinstance(value, str) and len(value) <= 40)
    return repr(value) if small else f"<a long {type(value).__name__}>"


def _int(name: str, value: Any, minimum: int = 0) -> int:
    if type(value) is not int or not minimum <= value <= MAX_INT:  # bools are not integers
        raise BadRequest(f"{name}: want an integer in {minimum}..{MAX_INT}, not {_shown(value)}")
    return value


def _bool(name: str, value: Any) -> bool:
    if type(value) is not bool:
        raise BadRequest(f"{name}: want true or false, not {_shown(value)}")
    return value


def _id(name: str, value: Any) -> str:
    if type(value) is not str or not value or len(value) > MAX_ID or not ID_RE.fullmatch(value):
        raise BadRequest(f"{name}: want a non-empty string of at most {MAX_ID} printable ASCII characters")
    return value


def _address(value: Any) -> str:
    address = _id("address", value)
    try:
        plain_hostport(address)
    except ValueError:
        raise BadRequest(f"address: want HOST:PORT (an IP address or DNS name), not {address[:MAX_ID]!r}") from None
    return address


def _zone(value: Any) -> str:
    if type(value) is not str or len(value) > MAX_ID or (value and not ID_RE.fullmatch(value)):
        raise BadRequest(f"zone: want a string of at most {MAX_ID} printable ASCII characters")
    return value


def _index(key: Any) -> int:
    if type(key) is str and INDEX_RE.fullmatch(key):
        return _int("hashes index", int(key))
    if type(key) is int:
        return _int("hashes index", key)
    raise BadRequest(f"hashes key: want piece indexes (decimal digits), not {_shown(key)}")


def _hashes(value: Any) -> dict[int, str]:
    if type(value) is not dict:
        raise BadRequest(f"hashes: want an object of piece index -> hex sha256, not {_shown(value)}")
    if len(value) > MAX_HASHES:
        raise BadRequest(f"hashes: at most {MAX_HASHES} per report, not {len(value)}")
    out: dict[int, str] = {}
    for key, digest in value.items():
        if type(digest) is not str:
            raise BadRequest(f"hashes[{str(key)[:MAX_QUERY]}]: want a string, not {_shown(digest)}")
        out[_index(key)] = digest
    return out


def _failed(value: Any) -> list[str]:
    if type(value) is not list:
        raise BadRequest(f"failed_parents: want a list of peer ids, not {_shown(value)}")
    if len(value) > MAX_FAILED_PARENTS:
        raise BadRequest(f"failed_parents: at most {MAX_FAILED_PARENTS} peer ids, not {len(value)}")
    return [_id("failed_parents[]", peer_id) for peer_id in value]


def _names(cls: type[Any]) -> tuple[frozenset[str], frozenset[str]]:
    """(every field, required fields) of a protocol dataclass."""
    every = frozenset(f.name for f in fields(cls))
    return every, frozenset(f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING)


_JOIN = _names(JoinRequest)
_REPORT = _names(Report)


def _object(what: str, data: Any, names: tuple[frozenset[str], frozenset[str]]) -> dict[str, Any]:
    every, required = names
    if type(data) is not dict:
        raise BadRequest(f"{what}: want an object")
    if not data.keys() <= every:
        raise BadRequest(f"{what}: unknown fields {sorted(map(str, data.keys() - every))}")
    if not required <= data.keys():
        raise BadRequest(f"{what}: missing fields {sorted(required - data.keys())}")
    return data


def parse_join(data: Any) -> JoinRequest:
    body = _object("JoinRequest", data, _JOIN)
    get = body.get
    return JoinRequest(
        peer_id=_id("peer_id", body["peer_id"]),
        address=_address(body["address"]),
        size=_int("size", body["size"]),
        piece_size=_int("piece_size", body["piece_size"], 1),
        pieces=_int("pieces", get("pieces", 0)),
        complete=_bool("complete", get("complete", False)),
        zone=_zone(get("zone", "")),
    )


def parse_report(data: Any) -> Report:
    body = _object("Report", data, _REPORT)
    get = body.get
    return Report(
        peer_id=_id("peer_id", body["peer_id"]),
        address=_address(body["address"]),
        pieces=_int("pieces", body["pieces"]),
        contiguous=_int("contiguous", body["contiguous"]),
        complete=_bool("complete", get("complete", False)),
        hashes=_hashes(get("hashes", {})),
        failed_parents=_failed(get("failed_parents", [])),
        size=_int("size", get("size", 0)),
        piece_size=_int("piece_size", get("piece_size", 0)),
        bad_hashes=_bool("bad_hashes", get("bad_hashes", False)),
        wants_fallback=_bool("wants_fallback", get("wants_fallback", False)),
        zone=_zone(get("zone", "")),
    )


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
