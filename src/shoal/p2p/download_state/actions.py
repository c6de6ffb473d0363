"""What a download's owner must do: the actions :class:`DownloadState` returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from shoal.p2p.download_state.events import ParentInfo


@dataclass(frozen=True, slots=True)
class AddParent:
    """Connect to (or reuse the connection to) this parent and say we are interested."""

    parent: ParentInfo


@dataclass(frozen=True, slots=True)
class RequestPiece:
    peer_id: str
    index: int


@dataclass(frozen=True, slots=True)
class WritePiece:
    """Write the piece ``peer_id`` sent: its hash matched."""

    index: int
    peer_id: str


@dataclass(frozen=True, slots=True)
class DiscardPiece:
    """Drop the piece ``peer_id`` sent (its buffer is not needed)."""

    index: int
    reason: str
    peer_id: str
    corrupt: bool = False


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Tell the parent we no longer want this piece (it timed out)."""

    peer_id: str
    index: int


@dataclass(frozen=True, slots=True)
class DropParent:
    """Stop using this parent for this blob; if ``avoid_until`` is set, for every blob until then."""

    peer_id: str
    reason: str
    avoid_until: float | None = None


@dataclass(frozen=True, slots=True)
class AnnouncePieces:
    """Tell our children (one HAVE each) that we now hold these verified pieces."""

    indices: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SendReport:
    """Report to the scheduler; apply its answer (:class:`~.events.SchedulerAnswer`, then
    :class:`~.events.FallbackAnswer` if ``wants_fallback``) or :class:`~.events.SchedulerFailed`.

    ``final``: the download is over and these are the last hashes of our origin fetch; send it
    after the rest has stopped (its answer is not applied)."""

    pieces: int
    """pieces held"""
    contiguous: int
    """bytes of the verified prefix"""
    hashes: Mapping[int, str] = field(default_factory=dict)
    """our origin fetch's piece hashes the scheduler has not taken yet"""
    failed_parents: tuple[str, ...] = ()
    """parents dropped for cause since the last report that got through"""
    wants_fallback: bool = False
    final: bool = False


@dataclass(frozen=True, slots=True)
class StartOriginFetch:
    """We hold the lease: fetch from the origin from the verified prefix on."""

    offset: int


@dataclass(frozen=True, slots=True)
class StopOriginFetch:
    """The lease went to ``holder``: stop our origin fetch, take the rest from the swarm."""

    holder: str


@dataclass(frozen=True, slots=True)
class AskFallback:
    """The swarm is stuck: ask the scheduler for a fallback lease before going to the origin
    (the ask itself goes as a :class:`SendReport` with ``wants_fallback``)."""

    reason: str


@dataclass(frozen=True, slots=True)
class GiveUp:
    """The swarm cannot finish: fetch the rest from the origin (the pull must not fail).

    ``fallback_lease``: the scheduler granted us one of the blob's fallback leases; the state
    keeps asking for :class:`SendReport` heartbeats (``wants_fallback``) to hold it while the
    owner fetches (apply :class:`~.events.ReportDue` at :meth:`DownloadState.wake_at`)."""

    reason: str
    fallback_lease: bool = False


@dataclass(frozen=True, slots=True)
class Complete:
    pass


Action = (
    AddParent
    | RequestPiece
    | CancelRequest
    | WritePiece
    | DiscardPiece
    | DropParent
    | AnnouncePieces
    | SendReport
    | StartOriginFetch
    | StopOriginFetch
    | AskFallback
    | GiveUp
    | Complete
)
