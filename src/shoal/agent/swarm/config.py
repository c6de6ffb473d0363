"""The swarm I/O's settings (the rules' knobs are :class:`~shoal.p2p.download_state.DownloadRules`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from shoal.p2p.download_state import DownloadRules


@dataclass(frozen=True, slots=True)
class SwarmConfig:
    peer_id: str
    address: str
    token: str | None
    rules: DownloadRules = field(default_factory=DownloadRules)
    connect_timeout: float = 10.0
    """a parent whose CPU is busy serving others can take seconds to accept a connection"""
    status_wait: float = 5.0
    """seconds a long-poll of the scheduler for piece hashes waits"""
    seed_announce_interval: float = 10.0
    max_seeding: int = 512
    superseed_copies: int = 2
