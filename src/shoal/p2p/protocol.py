"""The protocol between agents and schedulers (JSON over HTTP).

Every call carries ``Authorization: Bearer <peer token>``; the scheduler answers 401 without
it (it serves without a token only under the explicit lab opt-out
``--insecure-no-peer-auth``). The decoder (:func:`from_json`) raises only ``ValueError`` on
malformed input: these bodies come from the network.

Scheduler (``shoal scheduler``), one *task* per blob digest:

``POST /v1/tasks/{digest}/join`` — body :class:`JoinRequest`, answer :class:`TaskView`.
    A downloader joins a task. The scheduler hands it parents (peers holding pieces,
    lightly loaded first, children spread) and, if nobody holds the origin lease (or the
    holder died or stalled), makes it the *origin fetcher*: ``role == "fetcher"``.

``POST /v1/tasks/{digest}/report`` — body :class:`Report`, answer :class:`TaskView`.
    When something changed (a new piece hash of the fetcher's, a dropped parent, too few
    parents, an eighth of the blob more), at least every few seconds while downloading, and
    once when complete: progress, newly verified piece hashes (accepted only from the peer
    holding the lease when the report arrives, or from a fallback lease holder reporting the
    blob complete), and whether the peer is done. ``wants_fallback`` asks for a fallback
    lease (answered in ``TaskView.fallback``). The answer may move the lease to this peer (``role ==
    "fetcher"``; a complete peer gets it only to republish hashes a scheduler lacks) and
    refreshes its parents. ``piece_size`` must be ``choose_piece_size(size)``.

``GET /v1/tasks/{digest}/hashes?from=N&wait=S`` — answer :class:`HashesView`.
    Piece hashes published by the fetcher, from index N on; long-polls up to S seconds
    while none are new. Receivers check every piece against these.

``POST /v1/tasks/{digest}/leave`` — body ``{"peer_id": ...}``: a peer drops the blob.

``GET /v1/stats`` — counts for ``shoal status`` and tests.

Peers speak wire protocol v2 to each other (``shoal.p2p.wire``), not this protocol.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from types import UnionType
from typing import Any, Literal, Self, Union, get_args, get_origin, get_type_hints

import orjson

Role = Literal["fetcher", "peer"]

PEER_TOKEN_HEADER = "Authorization"
FULL_HEADER = "Shoal-Scheduler-Full"
"""set on a 503 that means "this scheduler tracks as many tasks as it may: take the blob from
the origin", so an agent does not wait for it as for a scheduler that is down"""


def bearer(token: str | None) -> dict[str, str]:
    return {} if not token else {PEER_TOKEN_HEADER: f"Bearer {token}"}


@dataclass(frozen=True, slots=True)
class PeerInfo:
    peer_id: str
    address: str
    """host:port of the peer's agent (its peer endpoints live there)."""
    complete: bool = False
    pieces: int = 0
    """how many pieces it holds (as last reported)."""


@dataclass(frozen=True, slots=True)
class JoinRequest:
    peer_id: str
    address: str
    size: int
    piece_size: int
    pieces: int = 0
    """pieces already held (an agent re-joining after a scheduler restart)."""
    complete: bool = False
    zone: str = ""
    """the node's topology zone (``topology.kubernetes.io/zone``); "" if unknown."""


@dataclass(frozen=True, slots=True)
class Report:
    peer_id: str
    address: str
    pieces: int
    """pieces held now"""
    contiguous: int
    """bytes held from the start of the blob (the lease goes to whoever holds most)."""
    complete: bool = False
    hashes: dict[int, str] = field(default_factory=dict)
    """piece index -> hex sha256, newly verified (accepted from the lease holder only)."""
    failed_parents: list[str] = field(default_factory=list)
    """peer ids that sent bad data or failed: the scheduler stops handing them out."""
    size: int = 0
    piece_size: int = 0
    bad_hashes: bool = False
    wants_fallback: bool = False
    """the swarm is stuck here: may this peer fetch the rest from the origin? (see TaskView.fallback)"""
    """the blob built from pieces that all matched the published hashes failed its digest: the
    hashes are wrong. The scheduler drops them if a peer in ``failed_parents`` published them."""
    zone: str = ""
    """as in :class:`JoinRequest` (a report may be the first a new scheduler hears of a peer)."""


@dataclass(frozen=True, slots=True)
class TaskView:
    role: Role
    parents: list[PeerInfo]
    size: int
    piece_size: int
    lease_ttl: float
    """seconds the fetcher's lease lasts without a report."""
    fetcher: str | None = None
    """peer id of the current lease holder."""
    hashes_known: int = 0
    fallback: bool = False
    """answering ``wants_fallback``: one of the blob's few fallback leases is this peer's,
    fetch the rest from the origin; False: keep waiting in the swarm"""


@dataclass(frozen=True, slots=True)
class HashesView:
    start: int
    hashes: list[str]
    """hex sha256 of pieces ``start, start+1, ...`` (a contiguous run)."""
    total: int
    """pieces in the blob"""


def to_json(obj: Any) -> dict[str, Any]:
    data: dict[str, Any] = asdict(obj)
    return data


def _task_view(view: TaskView) -> dict[str, Any]:
    # orjson reads a slotted dataclass attribute by attribute (about 0.6 us each): a view
    # with six parents took 4 us that way and takes 1.5 as a dict
    return {
        "role": view.role,
        "parents": [
            {"peer_id": p.peer_id, "address": p.address, "complete": p.complete, "pieces": p.pieces}
            for p in view.parents
        ],
        "size": view.size,
        "piece_size": view.piece_size,
        "lease_ttl": view.lease_ttl,
        "fetcher": view.fetcher,
        "hashes_known": view.hashes_known,
        "fallback": view.fallback,
    }


def dumps(obj: Any) -> bytes:
    """UTF-8 JSON of a protocol dataclass (or of plain JSON data): the document of
    ``json.dumps(to_json(obj))``, with piece-index keys as strings, written by orjson (which
    walks dataclasses itself: no ``asdict`` copy)."""
    if type(obj) is TaskView:  # the scheduler's answer to every join and report
        return orjson.dumps(_task_view(obj))
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


def loads(data: bytes | str) -> Any:
    """Decoded JSON; only ``ValueError`` for anything else (bad UTF-8 or syntax, nesting past
    1024, a number no float holds). Integers beyond 64 bits come back as floats."""
    return orjson.loads(data)


Check = Callable[[str, Any], Any]
"""(where, value) -> the field's value, or ValueError saying what ``where`` wants."""

INDEX_RE = re.compile(r"0|[1-9][0-9]{0,17}")
"""a piece index as a JSON object key: ASCII digits, no sign, no padding."""


def _want(where: str, what: str, value: Any) -> ValueError:
    small = value is None or isinstance(value, bool | float) or (isinstance(value, int) and value.bit_length() < 64)
    small = small or (isinstance(value, str) and len(value) <= 40)
    shown = repr(value) if small else f"<a long {type(value).__name__}>"
    return ValueError(f"{where}: want {what}, not {shown}")


def _int(where: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _want(where, "an integer", value)
    return value


def _float(where: str, value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise _want(where, "a finite number", value)
    return float(value)


def _str(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _want(where, "a string", value)
    return value


def _bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _want(where, "true or false", value)
    return value


def _index(where: str, key: Any) -> int:
    if isinstance(key, int) and not isinstance(key, bool) and key >= 0:
        return key
    if isinstance(key, str) and INDEX_RE.fullmatch(key):
        return int(key)
    raise _want(where, "piece indexes (decimal digits)", key)


def _checker(hint: Any) -> Check:
    """The check for one annotation of the protocol dataclasses (only the shapes they use)."""
    simple: dict[Any, Check] = {int: _int, float: _float, str: _str, bool: _bool}
    if hint in simple:
        return simple[hint]
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        allowed = args

        def literal(where: str, value: Any) -> Any:
            if not isinstance(value, str) or value not in allowed:
                raise _want(where, f"one of {', '.join(map(str, allowed))}", value)
            return value

        return literal
    if origin in (Union, UnionType) and len(args) == 2 and type(None) in args:
        inner = _checker(next(a for a in args if a is not type(None)))
        return lambda where, value: None if value is None else inner(where, value)
    if origin is list and len(args) == 1:
        item = _checker(args[0])

        def items(where: str, value: Any) -> list[Any]:
            if not isinstance(value, list):
                raise _want(where, "a list", value)
            return [item(f"{where}[]", v) for v in value]

        return items
    if origin is dict and args == (int, str):

        def mapping(where: str, value: Any) -> dict[int, str]:
            if not isinstance(value, dict):
                raise _want(where, "an object", value)
            return {_index(f"{where} key", k): _str(f"{where}[{k}]", v) for k, v in value.items()}

        return mapping
    if isinstance(hint, type) and is_dataclass(hint):
        nested: type[Any] = hint
        return lambda where, value: from_json(nested, value)
    raise TypeError(f"no JSON check for {hint!r}")


_SCHEMAS: dict[type[Any], tuple[dict[str, Check], frozenset[str]]] = {}


def _schema(cls: type[Any]) -> tuple[dict[str, Check], frozenset[str]]:
    """(check per field, required field names) of a protocol dataclass (built once per class)."""
    known = _SCHEMAS.get(cls)
    if known is not None:
        return known
    hints = get_type_hints(cls)
    checks = {f.name: _checker(hints[f.name]) for f in fields(cls)}
    required = frozenset(f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING)
    _SCHEMAS[cls] = checks, required
    return checks, required


def from_json(cls: type[Any], data: Any) -> Any:
    """Build a protocol dataclass from decoded JSON, checking the type of every field.

    Raises only ``ValueError`` (saying which field is wrong): for a non-object, missing or
    unknown fields, or a value of the wrong type (bools are not integers, floats are finite,
    piece indexes are decimal digits). Ranges are the caller's business.
    """
    checks, required = _schema(cls)
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: want an object")
    unknown = [k for k in data if k not in checks]
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {sorted(map(str, unknown))}")
    missing = required - data.keys()
    if missing:
        raise ValueError(f"{cls.__name__}: missing fields {sorted(missing)}")
    return cls(**{name: checks[name](f"{cls.__name__}.{name}", value) for name, value in data.items()})


@dataclass(frozen=True, slots=True)
class Stats:
    tasks: int
    peers: int
    lease_changes: int
    joins: int
    reports: int

    @classmethod
    def empty(cls) -> Self:
        return cls(0, 0, 0, 0, 0)
