"""A rollout simulator that drives Shoal's real pure cores in virtual time: ``python -m bench.simulate``.

The download rules are ``shoal.p2p.download_state.DownloadState`` and the scheduler's are
``shoal.scheduler.state.SchedulerState``, imported and called, never copied; what this
package adds is a flow-level network (per-node caps, max-min fair sharing, latency, zones),
a clock, the I/O glue the agent would do, and a BitTorrent-like reference policy to compare
with. See docs/fleet-benchmark.md ("Simulator").
"""
