"""What happened to a download: the events its owner applies to :class:`DownloadState`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ParentInfo:
    peer_id: str
    address: str


@dataclass(frozen=True, slots=True)
class SchedulerAnswer:
    """The scheduler's view after a join or a report: the lease holder, parents, and how many
    piece hashes it holds (a holder that published hashes answers for the blob's pieces).
    Also the answer to the report last sent (:class:`~.actions.SendReport`), if one is out."""

    fetcher: str | None
    parents: tuple[ParentInfo, ...] = ()
    hashes_known: int = 0
    complete_named: bool = False
    """one of ``parents`` holds the whole blob (a seed, a holder that finished)"""


@dataclass(frozen=True, slots=True)
class SchedulerFailed:
    """A report (or the join) did not get through."""


@dataclass(frozen=True, slots=True)
class ParentHas:
    """A parent holds these pieces (its bitfield, or one "have")."""

    peer_id: str
    pieces: frozenset[int]


@dataclass(frozen=True, slots=True)
class HashesKnown:
    """Piece hashes published by the lease holder."""

    hashes: Mapping[int, str]


@dataclass(frozen=True, slots=True)
class PiecesHashed:
    """Our own origin fetch hashed these pieces of the verified prefix: ours to publish."""

    hashes: Mapping[int, str]


@dataclass(frozen=True, slots=True)
class PieceArrived:
    """A worker received a whole piece from ``peer_id`` and hashed it (not written yet)."""

    peer_id: str
    index: int
    sha256: str


@dataclass(frozen=True, slots=True)
class PieceWritten:
    """A verified piece is on disk."""

    index: int


@dataclass(frozen=True, slots=True)
class PieceFailed:
    """A request to a parent failed (connect, timeout, broken transfer)."""

    peer_id: str
    index: int
    reason: str


@dataclass(frozen=True, slots=True)
class PieceRejected:
    """The parent said it does not have the piece (after all)."""

    peer_id: str
    index: int


@dataclass(frozen=True, slots=True)
class ParentLost:
    """The link to a parent broke, or could not be made (``unreachable``: not banned, the
    scheduler may hand it out again; a parent busy under a rollout is slow to accept)."""

    peer_id: str
    reason: str
    unreachable: bool = False


@dataclass(frozen=True, slots=True)
class BytesArrived:
    """Body bytes of pieces still arriving: slow is not stalled."""

    n: int


@dataclass(frozen=True, slots=True)
class PrefixAdvanced:
    """The blob's verified prefix grew (the origin fetch writes in order)."""

    contiguous: int


@dataclass(frozen=True, slots=True)
class OriginFetchFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class FallbackAnswer:
    """The scheduler's word on our ask to fetch the rest from the origin (granted: one of the
    blob's fallback leases is ours)."""

    granted: bool


@dataclass(frozen=True, slots=True)
class NodeFetching:
    """Whether another download of this node fetches its blob from the origin now (the
    owner tells each download when that changes): while one does, this download asks its
    own blob's fetcher last (``SPARE_FETCHER_FOR``)."""

    active: bool


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed (the owner wakes about once a second to let the stall rules look)."""


@dataclass(frozen=True, slots=True)
class ReportDue:
    """The time :meth:`DownloadState.wake_at` named has come: a report may be due."""


Event = (
    SchedulerAnswer
    | SchedulerFailed
    | ParentHas
    | HashesKnown
    | PiecesHashed
    | PieceArrived
    | PieceWritten
    | PieceFailed
    | PieceRejected
    | ParentLost
    | BytesArrived
    | PrefixAdvanced
    | OriginFetchFailed
    | FallbackAnswer
    | NodeFetching
    | Tick
    | ReportDue
)
