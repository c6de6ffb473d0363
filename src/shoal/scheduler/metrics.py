"""Prometheus metrics of one scheduler, in its own registry (several can share a process in tests)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shoal.scheduler.state import SchedulerState


class _StateCollector(Collector):
    """Counts read from the state at scrape time (the state keeps the counters, not the handlers)."""

    def __init__(self, state: SchedulerState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        s = self.state
        yield GaugeMetricFamily("shoal_scheduler_tasks", "Tasks (blobs) the scheduler tracks.", value=len(s.tasks))
        yield GaugeMetricFamily("shoal_scheduler_peers", "Distinct peers in any task.", value=len(s.peers))
        yield GaugeMetricFamily(
            "shoal_scheduler_task_peers",
            "Peer memberships over all tasks (peers x their tasks).",
            value=sum(len(t.members) for t in s.tasks.values()),
        )
        counters = (
            ("shoal_scheduler_lease_changes", "Origin leases granted (first grants and moves).", s.lease_changes),
            ("shoal_scheduler_joins", "Join calls applied.", s.joins),
            ("shoal_scheduler_reports", "Report calls applied.", s.reports),
            ("shoal_scheduler_hash_conflicts", "Piece hashes that disagreed with a known one.", s.hash_conflicts),
            ("shoal_scheduler_hashes_ignored", "Piece hashes sent by peers without the lease.", s.hashes_ignored),
            ("shoal_scheduler_hash_resets", "Tasks whose hashes were dropped as wrong (bad_hashes).", s.hash_resets),
            ("shoal_scheduler_fallbacks_granted", "Fallback leases granted to stalled downloads.", s.fallbacks_granted),
            (
                "shoal_scheduler_fallbacks_refused",
                "Fallback asks refused: the blob's fallback leases were all held.",
                s.fallbacks_refused,
            ),
        )
        for name, doc, value in counters:
            yield CounterMetricFamily(name, doc, value=value)


class SchedulerMetrics:
    def __init__(self, state: SchedulerState) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StateCollector(state))
        self.parents_per_join = Histogram(
            "shoal_scheduler_parents_per_join",
            "Parents handed out in one join answer.",
            buckets=(0, 1, 2, 3, 4, 6, 8, 12, 16),
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "shoal_scheduler_request_seconds",
            "Time to answer an API call (hashes long-polls excluded).",
            registry=self.registry,
        )
        self.lease_moves = Counter(
            "shoal_scheduler_lease_moves",
            "Origin leases taken from a live task's holder, by why (no report / no progress).",
            ["reason"],
            registry=self.registry,
        )
