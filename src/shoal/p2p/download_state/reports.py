"""When a download reports to the scheduler, and what the scheduler has heard from it.

A child reports when something happened (a dropped parent, another share of the blob, piece
hashes of ours), never more often than ``report_interval``; while it has fewer parents than
it could use, every ``2 * report_interval``; otherwise every ``heartbeat``, which keeps its
membership and the fetcher's lease alive. The origin fetcher reports each new piece hash at
once (children wait for it), and with nothing new every ``FETCHER_HEARTBEAT``. One report is
out at a time; what a failed one carried goes with the next, ``report_interval`` later.
"""

from __future__ import annotations

from collections.abc import Mapping

from shoal.p2p.download_state.actions import SendReport
from shoal.p2p.download_state.rules import FETCHER_HEARTBEAT, REPORT_SHARE, DownloadRules


class ReportBook:
    """The report rules' books (pure; owned by one :class:`DownloadState`)."""

    def __init__(self, rules: DownloadRules, count: int, now: float) -> None:
        self.rules = rules
        self.share = max(1, count // REPORT_SHARE)
        self.own_hashes: dict[int, str] = {}
        """piece hashes of our origin fetch"""
        self.published: set[int] = set()
        """pieces whose hash the scheduler took from us"""
        self.out: SendReport | None = None
        """the report sent and not answered yet"""
        self.last_at = now
        """when the last report (or the join) was sent"""
        self.retry_at = 0.0
        """no report before this (after a failed one)"""
        self.wanted = False
        """something happened that the scheduler should hear of"""
        self.written = 0
        """pieces written from parents"""
        self._written_reported = 0
        self._written_at_send = 0

    def unpublished(self) -> dict[int, str]:
        return {i: h for i, h in self.own_hashes.items() if i not in self.published}

    def hashed(self, hashes: Mapping[int, str]) -> None:
        for i, h in hashes.items():
            self.own_hashes.setdefault(i, h)

    def due_at(self, *, urgent: bool, wanting_parents: bool, fetching: bool = False) -> float | None:
        """When the next report is due (None: one is out). ``urgent``: a fallback ask, or
        the fetcher's new hashes; ``fetching``: we hold the origin lease and fetch."""
        if self.out is not None:
            return None
        if urgent:
            return self.retry_at
        news = self.wanted or self.written - self._written_reported >= self.share or bool(self.unpublished())
        if news:
            pause = self.rules.report_interval
        elif wanting_parents:
            pause = 2 * self.rules.report_interval
        elif fetching:
            pause = min(self.rules.heartbeat, FETCHER_HEARTBEAT)
        else:
            pause = self.rules.heartbeat
        return max(self.last_at + pause, self.retry_at)

    def sent(self, report: SendReport, now: float) -> None:
        self.out = report
        self.last_at = now
        self.wanted = False
        self._written_at_send = self.written

    def answered(self) -> SendReport | None:
        """The report out got through: its hashes are published. Returns it."""
        report, self.out = self.out, None
        if report is not None:
            self.published.update(report.hashes)
            self._written_reported = self._written_at_send
        return report

    def scheduler_holds(self, hashes_known: int) -> None:
        """The scheduler, answering us as the lease holder, knows ``hashes_known`` of the
        blob's hashes: fewer than it took from us means it lost them (it restarted, or another
        replica answers), and every hash of ours goes again."""
        if hashes_known < len(self.published):
            self.published.clear()

    def failed(self, now: float, pause: float) -> SendReport | None:
        """The report out did not get through: its news goes with the next, ``pause`` later."""
        report, self.out = self.out, None
        if report is not None:
            self.wanted = True
            self.retry_at = now + pause
        return report
