"""Fleet benchmark: a real image rollout to network-namespace nodes on shaped links.

Run ``python -m bench.fleet --help`` from the repository root (as root). See
``docs/fleet-benchmark.md`` for what it measures and how.
"""
