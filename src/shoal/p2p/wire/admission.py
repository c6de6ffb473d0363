"""Who may start a handshake or keep a link: per source address, per identity, in total.

A pure policy, no I/O, one owner (the peer hub, on its event loop), an injected clock. Before
authentication a connection is only an address: each address gets a few handshakes at once
and a few a second, so no single address can take the shared handshake budget (a flood of
idle connections from one host delays nobody else's). After it, a link is an address and an
identity (the node certificate's name, or the peer id without TLS): one node keeps at most
``links_per_identity`` links (two nodes that dial each other at once make two) and an address
``links_per_address``. Inbound links stop ``outbound_reserve`` short of ``max_links`` so the
node can always still dial its own parents.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Admission", "AdmissionLimits"]


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    max_handshakes: int = 64
    """inbound handshakes in progress, from every address together"""
    handshakes_per_address: int = 4
    """inbound handshakes in progress from one address"""
    handshake_rate: float = 8.0
    """new inbound handshakes per second from one address (a burst of ``handshake_burst``)"""
    handshake_burst: int = 16
    max_links: int = 1024
    """peer links open, inbound and outbound"""
    links_per_address: int = 4
    """inbound links from one address (a node dials from its own address)"""
    links_per_identity: int = 2
    """inbound links from one node (one each way when two nodes dial each other at once)"""
    tracked_addresses: int = 4096
    """addresses whose handshake rate is remembered (the least recently seen are forgotten)"""

    @property
    def outbound_reserve(self) -> int:
        """links only this node's own dials may use: inbound floods never take them"""
        return max(1, self.max_links // 4)

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class Admission:
    """Counts handshakes and inbound links; each ``begin``/``admit`` that returned None must be
    matched by its ``end``/``release``."""

    def __init__(self, limits: AdmissionLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._handshakes: dict[str, int] = {}
        self._buckets: dict[str, _Bucket] = {}
        """per address, least recently seen first"""
        self._links_by_address: dict[str, int] = {}
        self._links_by_identity: dict[str, int] = {}
        self.handshakes = 0
        self.inbound = 0
        self.outbound = 0
        """links this node dialled (the hub keeps the count)"""
        self.dialling = 0
        """dials in progress (the hub keeps the count)"""

    # -- before authentication ---------------------------------------------------------
    def begin_handshake(self, address: str) -> str | None:
        """Why a new connection from ``address`` may not start a handshake now (or None)."""
        limits = self.limits
        if self.handshakes >= limits.max_handshakes:
            return f"{self.handshakes} handshakes in progress"
        if self._handshakes.get(address, 0) >= limits.handshakes_per_address:
            return f"{limits.handshakes_per_address} handshakes in progress from {address}"
        if not self._take_token(address):
            return f"more than {limits.handshake_rate:g} handshakes a second from {address}"
        self._handshakes[address] = self._handshakes.get(address, 0) + 1
        self.handshakes += 1
        return None

    def end_handshake(self, address: str) -> None:
        left = self._handshakes.get(address, 0) - 1
        if left > 0:
            self._handshakes[address] = left
        else:
            self._handshakes.pop(address, None)
        self.handshakes = max(0, self.handshakes - 1)

    def _take_token(self, address: str) -> bool:
        now = self._clock()
        bucket = self._buckets.pop(address, None)
        if bucket is None:
            bucket = _Bucket(float(self.limits.handshake_burst), now)
        bucket.tokens = min(
            float(self.limits.handshake_burst), bucket.tokens + (now - bucket.at) * self.limits.handshake_rate
        )
        bucket.at = now
        self._buckets[address] = bucket  # most recently seen last
        if len(self._buckets) > self.limits.tracked_addresses:
            del self._buckets[next(iter(self._buckets))]
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    # -- after authentication ----------------------------------------------------------
    def admit(self, address: str, identity: str) -> str | None:
        """Why an authenticated inbound link may not be kept (or None: it is counted)."""
        limits = self.limits
        if self.inbound + self.outbound >= limits.max_links - limits.outbound_reserve:
            return f"{self.inbound + self.outbound} peer links open"
        if self._links_by_identity.get(identity, 0) >= limits.links_per_identity:
            return f"{identity} already has {limits.links_per_identity} links"
        if self._links_by_address.get(address, 0) >= limits.links_per_address:
            return f"{address} already has {limits.links_per_address} links"
        self._links_by_identity[identity] = self._links_by_identity.get(identity, 0) + 1
        self._links_by_address[address] = self._links_by_address.get(address, 0) + 1
        self.inbound += 1
        return None

    def release(self, address: str, identity: str) -> None:
        """An inbound link that ``admit`` counted closed."""
        for table, key in ((self._links_by_identity, identity), (self._links_by_address, address)):
            left = table.get(key, 0) - 1
            if left > 0:
                table[key] = left
            else:
                table.pop(key, None)
        self.inbound = max(0, self.inbound - 1)

    def may_dial(self) -> str | None:
        """Why this node may not open another link of its own (or None)."""
        if self.inbound + self.outbound + self.dialling >= self.limits.max_links:
            return f"{self.inbound + self.outbound} peer links open"
        return None
