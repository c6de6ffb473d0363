"""One module per way of getting the image to every node; each returns a ScenarioResult."""

from __future__ import annotations

from collections.abc import Callable

from bench.fleet.scenarios.base import Fleet, ScenarioResult
from bench.fleet.scenarios.bittorrent import run_bittorrent
from bench.fleet.scenarios.direct import run_direct
from bench.fleet.scenarios.shoal import run_p2p, run_p2p_tls, run_source

__all__ = ["SCENARIOS", "Fleet", "ScenarioResult"]

SCENARIOS: dict[str, Callable[[Fleet], ScenarioResult]] = {
    "direct": run_direct,
    "source": run_source,
    "p2p": run_p2p,
    "p2p-tls": run_p2p_tls,
    "bittorrent": run_bittorrent,
}
"""Name -> runner, in the order the issue lists them."""
