"""One blob's download through the swarm as a pure state: events in, actions out.

``shoal.agent.swarm.SwarmDownload`` is the one task that owns a download's state. Here one
object holds the missing pieces, the requests in flight, each parent's pieces and errors, the
lease and the stall clocks, what the scheduler has heard and what the children were told, and
changes only in :meth:`DownloadState.apply`; the task that owns it reads I/O workers' results
from a queue, applies them, and carries out the returned actions (send a request, start or
stop the origin fetch, write a verified piece, report, announce, give up). Time comes from an
injected clock, so every rule below is a millisecond unit test, and a simulator can drive the
same object in virtual time.

How to drive it (the whole public API)::

    s = DownloadState(peer_id=..., geometry=PieceGeometry.of(size), rules=..., clock=...)
    actions = s.apply(SchedulerAnswer(...))      # the join's answer
    ...                                          # then every event as it happens
    s.wake_at()   # when to apply ReportDue() next (None: nothing waits for time)
    s.finished    # True after Complete or GiveUp

Read-only attributes a driver may look at: ``missing``, ``parents``, ``in_flight``, ``extra``,
``hashes``, ``contiguous``, ``fetching``, ``suppliers``, ``fallback_lease``, ``reports``,
``awaiting_hash``. How long to let piece hashes gather before asking the scheduler again:
``hash_ask_pause(len(state.awaiting_hash))``.

Events (``shoal.p2p.download_state.events``):

- ``SchedulerAnswer(fetcher, parents, hashes_known=0)``: the join's or a report's answer;
  it also answers the ``SendReport`` that is out.
- ``SchedulerFailed()``: the report that was out did not get through.
- ``FallbackAnswer(granted)``: the answer to a report with ``wants_fallback`` (after its
  ``SchedulerAnswer``).
- ``ParentHas(peer_id, pieces)``, ``ParentLost(peer_id, reason, unreachable=False)``.
- ``PieceArrived(peer_id, index, sha256)`` (received, hashed, not written),
  ``PieceWritten(index)``, ``PieceFailed(peer_id, index, reason)``,
  ``PieceRejected(peer_id, index)``, ``BytesArrived(n)``.
- ``HashesKnown(hashes)``: published by the lease holder (long-poll of the scheduler).
- ``PiecesHashed(hashes)``: hashes of our own origin fetch's verified prefix, to publish.
- ``PrefixAdvanced(contiguous)``, ``OriginFetchFailed(reason)``.
- ``NodeFetching(active)``: whether another download of this node fetches from the origin.
- ``Tick()``: about once a second (stall, piece-timeout, hash-wait and endgame clocks).
- ``ReportDue()``: at :meth:`DownloadState.wake_at` (reports go out only then, or at once on
  ``PiecesHashed`` for the fetcher).

Actions (``shoal.p2p.download_state.actions``):

- ``AddParent(parent)``, ``DropParent(peer_id, reason, avoid_until=None)``.
- ``RequestPiece(peer_id, index)``, ``CancelRequest(peer_id, index)``.
- ``WritePiece(index, peer_id)``, ``DiscardPiece(index, reason, peer_id, corrupt=False)``.
- ``AnnouncePieces(indices)``: tell children we hold these pieces (one HAVE each).
- ``SendReport(pieces, contiguous, hashes, failed_parents, wants_fallback=False,
  final=False)``: report; apply the answer as above (a ``final`` one's answer is not applied).
- ``StartOriginFetch(offset)``, ``StopOriginFetch(holder)``.
- ``AskFallback(reason)``: the swarm is stuck; the ask itself goes as the next
  ``SendReport`` (``wants_fallback``), due at once.
- ``GiveUp(reason, fallback_lease=False)``, ``Complete()``.

Rules (each is one that ``tests/integration/test_swarm.py`` proves with real processes):

- **Origin once.** Only the lease holder fetches from the origin: a scheduler answer naming us
  fetcher starts the fetch; one naming another holder while we fetch stops ours.
- **Pipelining.** A parent's pieces are requestable as soon as it announces them (bitfield,
  then one "have" per verified piece): a child fetches while its parent is still downloading.
- **Announcing.** Every piece we hold verified (written after its hash matched, or passed by
  the verified prefix) is announced to our children once.
- **Endgame.** When every piece still missing is already asked for, a free lane asks a
  second parent for the oldest request (one extra copy at most, after ``endgame_after``);
  the first copy to arrive wins and the other request is cancelled. The last pieces of a
  blob otherwise wait on whichever parent's queue they landed in.
- **Moved parents.** A download takes a parent the scheduler newly names in place of one of
  ours it no longer names (dropped, not banned; its requests in flight cancelled), whatever
  its count of parents: the scheduler moves children off overloaded parents, and stops
  naming dead ones. One swap per answer at most; an answer that names none of ours (another
  scheduler replica, after a failover) swaps nothing.
- **A fetching node spares the other fetchers.** While another download of this node fetches
  its blob from the origin, this one asks nothing of its own blob's fetcher (the lease holder
  the scheduler named) until every piece hash is published, so long as pieces come from
  elsewhere (a piece from another parent within ``SPARE_FETCHER_FOR``). The
  fetcher's few superseeding copies of each new piece then go to nodes whose upload is free
  to pass them on, not to another fetcher's, which is full with its own blob's copies.
- **Bounded asking.** At most ``max_parents`` parents and ``lanes_per_parent`` requests in
  flight to each; which piece comes from :func:`shoal.p2p.policy.piece_selection.next_piece`.
- **Verify, then write.** A piece is written only if its sha256 matches the hash the lease
  holder published; one that arrives before its hash waits for it (at most ``hash_wait``).
- **Lying peers.** A corrupt piece drops its parent, bans it for this blob, avoids it for every
  blob for ``avoid_corrupt_for`` and reports it to the scheduler. The lease holders whose
  hashes we used are kept (``suppliers``): if the blob fails its digest, they lied.
- **Failing parents.** ``parent_errors`` failed requests in a row drop a parent; a lost parent's
  pieces stop counting and its requests go back to the pool at once.
- **Reports.** See :mod:`shoal.p2p.download_state.reports`: on news (at most every
  ``report_interval``), at once for the fetcher's new hashes, every ``2 * report_interval``
  while short of parents, and every ``heartbeat``; one out at a time; a completed fetcher
  sends its last hashes in a final report.
- **Stalls fall back, a few at a time.** With no progress for ``stall_timeout`` (and no origin
  fetch of ours) the download asks the scheduler for one of the blob's few fallback leases;
  granted, the rest comes from the origin, and the state keeps reporting every ``heartbeat``
  to hold the lease; refused, it waits in the swarm for another ``stall_timeout``. On
  saturated cores every node stalls at once: without the limit they would all go to the
  registry, and its egress would be N times the image. Progress is anything that moved: the
  verified prefix, pieces held, bytes arriving, or new piece hashes (the fetcher getting
  further). An ask that does not get through is tried again after 0.5, 1 and 2 s, then taken
  as a yes without a lease (with nobody to coordinate with, the pull must not fail).
- **Slow parents.** A request unanswered for ``piece_timeout`` is cancelled and counts as a
  failed request (a dead parent's link may take longer than that to be noticed).
- **The scheduler may die.** Failed reports alone do not end a download whose pieces keep
  coming; ``scheduler_failures`` in a row plus ``scheduler_lost_grace`` without progress ask
  for a fallback lease too.
"""

from __future__ import annotations

from shoal.p2p.download_state.actions import (
    Action,
    AddParent,
    AnnouncePieces,
    AskFallback,
    CancelRequest,
    Complete,
    DiscardPiece,
    DropParent,
    GiveUp,
    RequestPiece,
    SendReport,
    StartOriginFetch,
    StopOriginFetch,
    WritePiece,
)
from shoal.p2p.download_state.events import (
    BytesArrived,
    Event,
    FallbackAnswer,
    HashesKnown,
    NodeFetching,
    OriginFetchFailed,
    ParentHas,
    ParentInfo,
    ParentLost,
    PieceArrived,
    PieceFailed,
    PieceRejected,
    PiecesHashed,
    PieceWritten,
    PrefixAdvanced,
    ReportDue,
    SchedulerAnswer,
    SchedulerFailed,
    Tick,
)
from shoal.p2p.download_state.rules import (
    ASK_RETRY_PAUSES,
    HASH_ASK_PAUSE,
    MOVED,
    REPORT_SHARE,
    SPARE_FETCHER_FOR,
    DownloadRules,
    hash_ask_pause,
)
from shoal.p2p.download_state.state import DownloadState

__all__ = [
    "ASK_RETRY_PAUSES",
    "HASH_ASK_PAUSE",
    "MOVED",
    "REPORT_SHARE",
    "SPARE_FETCHER_FOR",
    "Action",
    "AddParent",
    "AnnouncePieces",
    "AskFallback",
    "BytesArrived",
    "CancelRequest",
    "Complete",
    "DiscardPiece",
    "DownloadRules",
    "DownloadState",
    "DropParent",
    "Event",
    "FallbackAnswer",
    "GiveUp",
    "HashesKnown",
    "NodeFetching",
    "OriginFetchFailed",
    "ParentHas",
    "ParentInfo",
    "ParentLost",
    "PieceArrived",
    "PieceFailed",
    "PieceRejected",
    "PieceWritten",
    "PiecesHashed",
    "PrefixAdvanced",
    "ReportDue",
    "RequestPiece",
    "SchedulerAnswer",
    "SchedulerFailed",
    "SendReport",
    "StartOriginFetch",
    "StopOriginFetch",
    "Tick",
    "WritePiece",
    "hash_ask_pause",
]
