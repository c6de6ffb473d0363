"""The core's side of a scheduler call, in the scheduler protocol's terms: a ``SendReport``
as the :class:`~shoal.p2p.protocol.Report` to send, and the answer as the event to apply.

The agent and the simulator both call the scheduler for the core; building these here keeps
what they send and what they apply the same.
"""

from __future__ import annotations

from shoal.p2p.download_state.actions import SendReport
from shoal.p2p.download_state.events import ParentInfo, SchedulerAnswer
from shoal.p2p.pieces import PieceGeometry
from shoal.p2p.protocol import Report, TaskView

__all__ = ["answer_event", "report_message"]


def report_message(action: SendReport, peer_id: str, address: str, geometry: PieceGeometry) -> Report:
    """The report ``action`` asks for, from the peer ``peer_id`` at ``address``."""
    return Report(
        peer_id,
        address,
        pieces=action.pieces,
        contiguous=action.contiguous,
        hashes=dict(action.hashes),
        failed_parents=list(action.failed_parents),
        size=geometry.size,
        piece_size=geometry.piece_size,
        wants_fallback=action.wants_fallback,
    )


def answer_event(view: TaskView) -> SchedulerAnswer:
    """The scheduler's answer to a join or report, as the core's event."""
    parents = tuple(ParentInfo(p.peer_id, p.address) for p in view.parents)
    return SchedulerAnswer(view.fetcher, parents, view.hashes_known, any(p.complete for p in view.parents))
