"""Prometheus text exposition flattened to ``{"name{label=value,...}": value}`` (pure).

One form for every reader of Shoal's own ``/metrics``: ``shoal status``, the demo's fleet
and the tests look samples up by prefix in it.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def flatten(text: str) -> dict[str, float]:
    """Every sample of ``text``; labels sorted by name, so a key is stable."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out
