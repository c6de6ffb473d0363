"""Prometheus text flattened to stable keys."""

from __future__ import annotations

from shoal.core.promtext import flatten

TEXT = """# HELP shoal_agent_peer_bytes_total Piece bytes
# TYPE shoal_agent_peer_bytes_total counter
shoal_agent_peer_bytes_total{direction="upload",b="2"} 5.0
shoal_agent_peer_bytes_total{direction="download",b="1"} 7.0
# HELP shoal_agent_cache_bytes Bytes
# TYPE shoal_agent_cache_bytes gauge
shoal_agent_cache_bytes 42.0
"""


def test_flatten_sorts_labels_and_keeps_unlabelled_names() -> None:
    assert flatten(TEXT) == {
        "shoal_agent_peer_bytes_total{b=2,direction=upload}": 5.0,
        "shoal_agent_peer_bytes_total{b=1,direction=download}": 7.0,
        "shoal_agent_cache_bytes": 42.0,
    }
