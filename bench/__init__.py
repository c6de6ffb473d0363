"""Benchmarks: not timed tests; each prints ratios measured side by side in one run."""
