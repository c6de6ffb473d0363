"""Request bodies from JSON, checked field by field: bad input is a 400 with the reason."""

from __future__ import annotations

from typing import Any

from shoal.p2p.protocol import JoinRequest, Report, from_json

MAX_ID = 256


class BadRequest(ValueError):
    """A body or parameter the API cannot accept."""


def _int(name: str, value: Any, minimum: int = 0) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise BadRequest(f"{name}: want an integer >= {minimum}, not {value!r}")


def _bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise BadRequest(f"{name}: want true or false, not {value!r}")


def _id(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value or len(value) > MAX_ID:
        raise BadRequest(f"{name}: want a non-empty string of at most {MAX_ID} characters")


def _address(value: Any) -> None:
    _id("address", value)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadRequest(f"address: want HOST:PORT, not {value!r}")


def _build(cls: type[Any], data: Any) -> Any:
    try:
        return from_json(cls, data)
    except (ValueError, TypeError, AttributeError) as exc:
        raise BadRequest(str(exc)) from None


def parse_join(data: Any) -> JoinRequest:
    req: JoinRequest = _build(JoinRequest, data)
    _id("peer_id", req.peer_id)
    _address(req.address)
    _int("size", req.size)
    _int("piece_size", req.piece_size, 1)
    _int("pieces", req.pieces)
    _bool("complete", req.complete)
    return req


def parse_report(data: Any) -> Report:
    hashes = data.get("hashes", {}) if isinstance(data, dict) else {}
    if not isinstance(hashes, dict) or not all(isinstance(v, str) for v in hashes.values()):
        raise BadRequest("hashes: want an object of piece index -> hex sha256")
    rep: Report = _build(Report, data)
    _id("peer_id", rep.peer_id)
    _address(rep.address)
    _int("pieces", rep.pieces)
    _int("contiguous", rep.contiguous)
    _bool("complete", rep.complete)
    _int("size", rep.size)
    _int("piece_size", rep.piece_size)
    if not isinstance(rep.failed_parents, list):
        raise BadRequest("failed_parents: want a list of peer ids")
    for peer_id in rep.failed_parents:
        _id("failed_parents[]", peer_id)
    return rep


def parse_leave(data: Any) -> str:
    if not isinstance(data, dict) or set(data) != {"peer_id"}:
        raise BadRequest('leave: want {"peer_id": ...}')
    _id("peer_id", data["peer_id"])
    peer_id: str = data["peer_id"]
    return peer_id
