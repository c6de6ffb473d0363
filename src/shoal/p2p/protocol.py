"""Wire protocol between agents and schedulers, and between agents (JSON over HTTP).

Every call carries ``Authorization: Bearer <peer token>`` when a token is configured; the
scheduler and the peer endpoints answer 401 without it.

Scheduler (``shoal scheduler``), one *task* per blob digest:

``POST /v1/tasks/{digest}/join`` — body :class:`JoinRequest`, answer :class:`TaskView`.
    A downloader joins a task. The scheduler hands it parents (peers holding pieces,
    lightly loaded first, children spread) and, if nobody holds the origin lease (or the
    holder died or stalled), makes it the *origin fetcher*: ``role == "fetcher"``.

``POST /v1/tasks/{digest}/report`` — body :class:`Report`, answer :class:`TaskView`.
    Every ~0.5 s while downloading, and once when complete: progress, newly verified piece
    hashes (only the lease holder's are accepted), and whether the peer is done. The answer
    may move the lease to this peer (``role == "fetcher"``) and refreshes its parents.

``GET /v1/tasks/{digest}/hashes?from=N&wait=S`` — answer :class:`HashesView`.
    Piece hashes published by the fetcher, from index N on; long-polls up to S seconds
    while none are new. Receivers check every piece against these.

``POST /v1/tasks/{digest}/leave`` — body ``{"peer_id": ...}``: a peer drops the blob.

``GET /v1/stats`` — counts for ``shoal status`` and tests.

Peers (every agent, on its own listen address):

``GET /p2p/v1/blobs/{digest}/status?have=N&want=B&wait=S`` — answer :class:`PeerStatus`.
    Which pieces this peer holds; long-polls up to S seconds until it holds more than N of
    the pieces in bitfield B (the asker's missing pieces; without B: of all pieces), so a
    child is woken only by pieces it can use.

``GET /p2p/v1/blobs/{digest}/pieces/{index}`` — the piece's bytes (404 when not held).
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Self

Role = Literal["fetcher", "peer"]

PEER_TOKEN_HEADER = "Authorization"


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


@dataclass(frozen=True, slots=True)
class HashesView:
    start: int
    hashes: list[str]
    """hex sha256 of pieces ``start, start+1, ...`` (a contiguous run)."""
    total: int
    """pieces in the blob"""


@dataclass(frozen=True, slots=True)
class PeerStatus:
    size: int
    piece_size: int
    bitfield: str
    """base64 of one bit per piece, most significant bit first."""
    complete: bool
    count: int


def to_json(obj: Any) -> dict[str, Any]:
    data: dict[str, Any] = asdict(obj)
    return data


def from_json(cls: type[Any], data: Any) -> Any:
    """Build a protocol dataclass from decoded JSON, rejecting missing or unknown fields."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: want an object")
    names = set(cls.__dataclass_fields__)
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
    kwargs = dict(data)
    if cls is Report and "hashes" in kwargs:
        kwargs["hashes"] = {int(k): str(v) for k, v in kwargs["hashes"].items()}
    if cls is TaskView and "parents" in kwargs:
        kwargs["parents"] = [PeerInfo(**p) for p in kwargs["parents"]]
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"{cls.__name__}: {exc}") from None


def encode_bitfield(bits: list[bool]) -> str:
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i // 8] |= 0x80 >> (i % 8)
    return base64.b64encode(bytes(out)).decode()


def decode_bitfield(text: str, count: int) -> list[bool]:
    raw = base64.b64decode(text, validate=True)
    if len(raw) != (count + 7) // 8:
        raise ValueError(f"bitfield of {len(raw)} bytes for {count} pieces")
    return [bool(raw[i // 8] & (0x80 >> (i % 8))) for i in range(count)]


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
