"""The knobs of one download's rules (the agent config's ``swarm:`` section sets them)."""

from __future__ import annotations

from dataclasses import dataclass

ASK_RETRY_PAUSES = (0.5, 1.0, 2.0)
"""seconds between asks for a fallback lease that did not reach the scheduler; after the last
one an ask that cannot get through is taken as a yes (nobody is left to coordinate with)"""
MOVED = "the scheduler named another parent"
"""the reason of a ``DropParent`` that is no failure: the scheduler moved us to another parent"""
HASH_ASK_PAUSE = 0.5
"""seconds a download lets piece hashes gather at the scheduler before it asks again, while no
received piece waits for one: a child that asked after every new hash made one call per
piece, most of them before it needed the hash; a piece waiting for its hash asks at once"""
FETCHER_HEARTBEAT = 2.0
"""seconds after which the origin fetcher reports with nothing new (at most; ``heartbeat``
if shorter): the scheduler takes a named fetcher silent for 5 s at this pace as dead
(``FETCHER_SUSPECT_SILENCE``), and a live one whose next piece is slow must not look so"""
SPARE_FETCHER_FOR = 2.0
"""seconds without a piece after which a download beside its node's own origin fetch asks its
blob's fetcher after all (``NodeFetching``): the fetcher is its last resort, not a parent it
waits for while no other has anything"""
REPORT_SHARE = 8
"""a child reports after every 1/REPORT_SHARE of the blob it wrote: the scheduler ranks
parents by how much they hold"""


@dataclass(frozen=True, slots=True)
class DownloadRules:
    """The swarm's knobs for one download."""

    max_parents: int = 4
    lanes_per_parent: int = 1
    max_requests: int = 12
    """requests in flight for one download, over all its parents: each arriving piece has a
    buffer of its own until it is written, so this bounds the download's memory"""
    stall_timeout: float = 25.0
    """longer than the scheduler's lease TTL (15 s): a dead fetcher's successor takes over first"""
    hash_wait: float = 25.0
    """how long a received piece waits for its published hash before it is discarded"""
    parent_errors: int = 3
    refused_asks: int = 3
    """fallback asks refused in a row, without progress in between, each while the
    scheduler named a parent holding the whole blob and knew every piece's hash, after which
    the download reads the registry without a lease, as a direct pull would. The scheduler
    refuses the ask for that copy's sake; a node that cannot reach it (its certificate
    refused by every peer, a network that lets it reach the scheduler but no node) waited
    for ever. Refused otherwise (hashes missing, the fallback leases taken), others are
    reading the registry already, and waiting for them spares it."""
    avoid_corrupt_for: float = 600.0
    scheduler_failures: int = 3
    scheduler_lost_grace: float = 10.0
    window: int = 4
    """pieces ahead of the reader wanted in order (``next_piece``)"""
    piece_timeout: float = 30.0
    """seconds a request may go unanswered before it is cancelled and counted as failed"""
    endgame_after: float = 0.5
    """seconds a request must be out before a second parent is asked for the same piece"""
    max_unverified: int = 64 << 20
    """bytes of received pieces waiting for their hash, at most: beyond, no new requests (a
    scheduler without hashes, or a peer sending junk, must not fill the agent's memory)"""
    report_interval: float = 0.5
    """least seconds between two reports of a child (the fetcher reports each new piece hash
    at once)"""
    heartbeat: float = 5.0
    """seconds after which a download reports even with nothing new: keeps its membership and
    the fetcher's lease alive (the scheduler's lease lasts 15 s), and brings lease changes"""


def hash_ask_pause(pieces_waiting: int) -> float:
    """Seconds before the next ask for piece hashes, given how many received pieces wait for
    theirs (``HASH_ASK_PAUSE``): none now if a piece waits, as the ask may answer at once."""
    return 0.0 if pieces_waiting else HASH_ASK_PAUSE
