"""A BitTorrent-like reference swarm, to compare Shoal's rules with on the same network.

One torrent for the whole image (its pieces are the agents' pieces of every layer, so the
comparison is of rules, not piece sizes), seeded by the origin. Each node knows a random
peer set (``PEER_SET`` peers drawn from the tracker, connections both ways), requests the
rarest piece among its peers (random first piece through random tie-breaks), keeps
``PIPELINE`` requests out per peer that unchokes it, and unchokes ``UNCHOKE`` interested
peers by the bytes they sent it in the last ``RECHOKE`` seconds (a seed: by the bytes it
sent them) plus one optimistic unchoke rotated every ``OPTIMISTIC`` seconds; free unchoke
slots are filled at once (libtorrent does). Endgame: once every missing piece is asked
for, free pipeline slots ask a second peer; the first copy wins, the other is cancelled.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import partial

import numpy as np

from bench.simulate.network import Transfer
from bench.simulate.world import ORIGIN, World

PEER_SET = 50
UNCHOKE = 4
PIPELINE = 2
RECHOKE = 10.0
OPTIMISTIC = 30.0


@dataclass(slots=True, eq=False)
class Ask:
    """One request of a piece from ``peer``: its transfer once the request reached the peer."""

    peer: int
    transfer: Transfer | None = None
    dropped: bool = False


class BitTorrentSwarm:
    def __init__(self, world: World, seed: int) -> None:
        self.world = world
        self.rng = random.Random(f"bittorrent/{seed}")
        self.noise = np.random.default_rng(seed)
        fleet = world.fleet
        self.piece_bytes = np.array(
            [
                min(ps, size - i * ps)
                for size, ps in zip(fleet.layers, fleet.piece_sizes, strict=True)
                for i in range(-(-size // ps))
            ]
        )
        pieces = self.piece_bytes.size
        n = fleet.spec.nodes + 1
        self.have = np.zeros((n, pieces), dtype=bool)
        self.have[ORIGIN] = True
        self.count = np.zeros(n, dtype=np.int64)
        self.count[ORIGIN] = pieces
        self.requested = np.zeros((n, pieces), dtype=np.int8)
        """how many requests of each piece a node has out (endgame: two)"""
        everyone = list(range(n))
        peers: list[set[int]] = [set() for _ in range(n)]
        for a in range(1, n):
            for b in self.rng.sample(everyone, min(PEER_SET + 1, n)):
                if b != a:
                    peers[a].add(b)
                    peers[b].add(a)
        self.peers = [sorted(p) for p in peers]
        self.peer_index = [np.array(p, dtype=np.int64) for p in self.peers]
        self.avail = np.zeros((n, pieces), dtype=np.int32)
        for a in range(n):
            self.avail[a] = self.have[self.peer_index[a]].sum(axis=0)
        self.unchoking: list[set[int]] = [set() for _ in range(n)]
        self.optimistic: list[int | None] = [None] * n
        self.out: list[dict[int, list[Ask]]] = [{} for _ in range(n)]
        """node -> piece -> its requests out"""
        self.rechokes = [0] * n
        self.per_peer: list[dict[int, int]] = [{} for _ in range(n)]
        self.received: list[dict[int, float]] = [{} for _ in range(n)]
        self.sent: list[dict[int, float]] = [{} for _ in range(n)]

    def start(self) -> None:
        timers = self.world.timers
        for a in range(self.world.fleet.spec.nodes + 1):
            timers.at(self.rng.random() * RECHOKE, partial(self._rechoke_loop, a))

    def kill(self, node: int) -> None:
        """``node`` died: its peers forget it (the network already dropped its transfers)."""
        for b in self.peers[node]:
            if node in self.unchoking[b]:
                self.unchoking[b].discard(node)
            self._drop_asks(b, node)
        for b in self.peers[node]:
            if b not in self.world.dead:
                self._fill_slots(b)
                self._request_all(b)

    # -- choking -------------------------------------------------------------------------
    def _interested(self, a: int, b: int) -> bool:
        """Whether ``a`` wants something ``b`` has."""
        return bool((self.have[b] & ~self.have[a]).any())

    def _rechoke_loop(self, node: int) -> None:
        if node in self.world.dead:
            return
        self._rechoke(node, rotate=self.rechokes[node] % round(OPTIMISTIC / RECHOKE) == 0)
        self.rechokes[node] += 1
        self.world.timers.after(RECHOKE, lambda: self._rechoke_loop(node))

    def _rechoke(self, node: int, rotate: bool) -> None:
        interested = [b for b in self.peers[node] if b not in self.world.dead and self._interested(b, node)]
        seeding = self.count[node] == self.piece_bytes.size
        score = self.sent[node] if seeding else self.received[node]
        self.rng.shuffle(interested)
        ranked = sorted(interested, key=lambda b: -score.get(b, 0.0))
        regular = set(ranked[:UNCHOKE])
        rest = [b for b in ranked[UNCHOKE:]]
        optimistic = self.optimistic[node]
        if rotate or optimistic not in rest:
            optimistic = self.rng.choice(rest) if rest else None
        self.optimistic[node] = optimistic
        self.received[node] = {}
        self.sent[node] = {}
        self._set_unchoked(node, regular | ({optimistic} if optimistic is not None else set()))

    def _set_unchoked(self, node: int, chosen: set[int]) -> None:
        old = self.unchoking[node]
        self.unchoking[node] = chosen
        for b in old - chosen:
            self._choked(b, node)
        for b in chosen - old:
            self._request(b, node)

    def _fill_slots(self, node: int) -> None:
        """Free unchoke slots go to interested peers at once."""
        free = UNCHOKE + 1 - len(self.unchoking[node])
        if free <= 0:
            return
        candidates = [
            b
            for b in self.peers[node]
            if b not in self.unchoking[node] and b not in self.world.dead and self._interested(b, node)
        ]
        if not candidates:
            return
        chosen = set(self.rng.sample(candidates, min(free, len(candidates))))
        self._set_unchoked(node, self.unchoking[node] | chosen)

    def _choked(self, a: int, b: int) -> None:
        """``b`` choked ``a``: its requests there are dropped."""
        self._drop_asks(a, b)

    def _drop_asks(self, a: int, b: int) -> None:
        for piece, asks in list(self.out[a].items()):
            kept = []
            for ask in asks:
                if ask.peer == b:
                    self._cancel(ask)
                    self.requested[a, piece] -= 1
                else:
                    kept.append(ask)
            if kept:
                self.out[a][piece] = kept
            else:
                del self.out[a][piece]
        self.per_peer[a].pop(b, None)

    def _cancel(self, ask: Ask) -> None:
        ask.dropped = True
        if ask.transfer is not None:
            self.world.net.cancel(ask.transfer)

    # -- requests ------------------------------------------------------------------------
    def _request_all(self, a: int) -> None:
        for b in self.peers[a]:
            if a in self.unchoking[b]:
                self._request(a, b)

    def _request(self, a: int, b: int) -> None:
        """``a`` fills its pipeline to ``b`` (which unchokes it)."""
        if a in self.world.dead or b in self.world.dead or a in self.world.done_at:
            return
        while self.per_peer[a].get(b, 0) < PIPELINE:
            piece = self._pick(a, b)
            if piece is None:
                return
            self._ask(a, b, piece)

    def _pick(self, a: int, b: int) -> int | None:
        wanted = self.have[b] & ~self.have[a]
        fresh = wanted & (self.requested[a] == 0)
        if fresh.any():
            cost = np.where(fresh, self.avail[a] + self.noise.random(fresh.size) * 0.5, np.inf)
            return int(cost.argmin())
        # endgame: every missing piece is asked for; ask b too for one asked once, elsewhere
        if (~self.have[a] & (self.requested[a] == 0)).any():
            return None
        second = wanted & (self.requested[a] == 1)
        for piece in np.flatnonzero(second).tolist():
            if all(ask.peer != b for ask in self.out[a].get(piece, ())):
                return piece
        return None

    def _ask(self, a: int, b: int, piece: int) -> None:
        self.requested[a, piece] += 1
        self.per_peer[a][b] = self.per_peer[a].get(b, 0) + 1
        ask = Ask(b)

        def send() -> None:
            if not ask.dropped and a in self.unchoking[b]:
                ask.transfer = self.world.net.send(b, a, int(self.piece_bytes[piece]), lambda: self._got(a, b, piece))

        self.out[a].setdefault(piece, []).append(ask)
        self.world.message(a, b, send)

    def _got(self, a: int, b: int, piece: int) -> None:
        if a in self.world.dead:
            return
        nbytes = float(self.piece_bytes[piece])
        self.received[a][b] = self.received[a].get(b, 0.0) + nbytes
        self.sent[b][a] = self.sent[b].get(a, 0.0) + nbytes
        self.per_peer[a][b] = max(0, self.per_peer[a].get(b, 0) - 1)
        asks = self.out[a].pop(piece, [])
        self.requested[a, piece] = 0
        for ask in asks:
            if ask.peer != b:
                self._cancel(ask)
                self.per_peer[a][ask.peer] = max(0, self.per_peer[a].get(ask.peer, 0) - 1)
        if self.have[a, piece]:
            self._request_all(a)
            return
        self.have[a, piece] = True
        self.count[a] += 1
        self.avail[self.peer_index[a], piece] += 1
        if self.count[a] == self.piece_bytes.size:
            self.world.done_at[a] = self.world.clock.now
        # the HAVE: peers a unchokes (or may now) can ask for the new piece
        self.world.timers.after(0.0, lambda: self._after_have(a, b))

    def _after_have(self, a: int, b: int) -> None:
        if a in self.world.dead:
            return
        self._fill_slots(a)
        for c in self.unchoking[a]:
            self._request(c, a)
        self._request_all(a)
        for p in list(self.per_peer[a]):
            if self.per_peer[a][p] == 0:
                del self.per_peer[a][p]
