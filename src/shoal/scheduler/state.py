"""The scheduler's state machine: tasks, their peers, parents, the origin lease, piece hashes.

Pure: no I/O, no clock of its own (every call takes ``now``, seconds on a monotonic clock
that never goes back). The server calls these methods from its event loop only, and none of
them awaits, so each call is atomic: the loop is the single owner of this state.

State is soft. Agents re-join and re-report, so a scheduler that restarts (or an agent that
fails over to another scheduler) rebuilds it within a report interval; only the piece
hashes of blobs in flight are lost, and the lease rules below get them published again.

The origin lease:
    * at most one holder per task; it is the only peer whose piece hashes are accepted (a
      report's hashes count when its sender holds the lease as the report arrives: a peer
      that claims ``complete`` gets no say over hashes while someone else holds it);
    * given to a joiner (or reporter) when nobody holds it;
    * lost when the holder sends no report for ``lease_ttl`` (``SUSPECT_HOLDER_SILENCE``,
      or ``FETCHER_SUSPECT_SILENCE`` for a fetcher reporting at its pieces' pace, once a
      child named it in ``failed_parents``), when its ``contiguous`` has not
      grown for ``stall_timeout``, when it leaves or expires, or when it is complete and every
      piece hash is known;
    * an open lease goes to the live (heard from within ``lease_ttl``), non-suspect peer with
      the most ``contiguous`` bytes, on that peer's next join or report (ties: whoever asks
      first); a stalled holder keeps it while no one else qualifies. A complete peer
      qualifies only while some piece hash is unknown: that is how a restarted scheduler
      gets the hashes back (a seed re-announces, takes the open lease, and its next report's
      hashes are the holder's);
    * leases are spread: a peer that holds the lease of another task comes after every
      candidate that holds none, and (unless complete: a seed's lease costs no origin fetch)
      does not take the lease of a task younger than ``LEASE_SPREAD_WAIT`` (a lease-free peer
      is likely to join it within that time);
    * not needed while some live peer is complete *and* every piece hash is known; needed
      again when that stops being true. A suspect complete peer counts while it is heard
      from within ``lease_ttl``: ``failed_parents`` names parents that merely timed out too
      (a seed busy serving a whole swarm), every piece a child takes from it is checked
      against the known hashes, and re-opening the lease would read the whole blob from the
      registry again (the simulator showed it at 40 nodes: 1.33x origin egress). A seed
      announces itself every 10 s, so one named and silent longer is taken for dead: a
      fetcher that finished and died with the last pieces on it alone left every child
      stalled until the fallback leases (``stall_timeout``).

Wrong hashes: a report with ``bad_hashes`` (a downloader's blob matched every published
hash but not its digest) that names in ``failed_parents`` a peer whose hashes were accepted
drops all of the task's hashes (at most once per ``lease_ttl``), and takes the lease from
that peer; the named peers are suspects, so the next holder is someone else, and the
hashes are published again (by a fetcher, or a seed that fetched the blob from the origin).

Bounds: a task's size is at most ``max_blob_size`` and its piece size is the agents' rule
(``choose_piece_size``), so a task holds at most ``piece_count`` hashes, allocated only when
the first one is published; at most ``max_tasks`` tasks exist at once.

Parents of a downloader: live peers of the task, also those that hold no piece yet (they
will, and they push each piece they verify to their children: handing out only early
holders made every downloader a child of the same few nodes, and the rest of the fleet's
uploads went unused; the simulator at 100 nodes: 20 of 101 Gbit/s used); never the
downloader itself, never a peer some downloader reported in ``failed_parents`` within
``suspect_ttl``. Parents handed out before are handed again while they stay usable; only
the missing places are filled by the parent policy, which sees a random sample of the
candidates when there are many (bounded work per call however large the task). Parents are
kept once handed, so a peer that joined late in a wave is a parent of few and its upload
idles: at most every ``REBALANCE_EVERY`` per downloader, each handed parent (all but one)
with more links than ``REBALANCE_LOAD`` times the average (downloaders naming it, over all
tasks) gives way to a piece holder of its zone with under 70% of its links and no fewer pieces than the
child (or the heavy parent) has, from a small sample; never the blob's lease holder (its
source) nor a complete peer. The downloader takes the new parent in place of the one no
longer named.

Zones: peers say their topology zone when they join. Parents in the downloader's zone come
first; while ``ZONE_GATEWAYS`` live members of a zone already take the blob from other
zones, the zone's other members get parents in their own zone only.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, cast

from shoal.p2p.pieces import choose_piece_size, piece_count
from shoal.p2p.protocol import HashesView, JoinRequest, PeerInfo, Report, Stats, TaskView
from shoal.scheduler.config import SchedulerConfig
from shoal.scheduler.policy import PARENT_POLICIES, Candidate, ParentPolicy

HASH_RE = re.compile(r"[0-9a-f]{64}")
MAX_SUSPECTS = 1024
"""per task; more names than this in ``failed_parents`` are ignored."""
MAX_PUBLISHERS = 64
"""per task: the most recent lease holders whose hashes were accepted (who a ``bad_hashes`` report can blame)."""
BEST_CACHE_SECONDS = 0.5
"""how long the "who should take the open lease" answer is reused (it scans the whole task)."""
SHARED_VIEWS = 8
"""per task: answers of ``hashes`` kept by their start and handed to every caller asking from
it until the hashes change (a rollout's long-polls all ask from the same few starts: one
answer per arrival of a hash rather than one per waiting peer)."""
SHARED_RUN = 64
"""hashes in a kept answer at most (a late joiner's long run is built for it alone: a kept
answer of every run would hold ``piece_count`` squared references)."""
LEASE_SPREAD_WAIT = 1.0
"""seconds a new task's lease waits for a peer that holds no other lease: the first node of a
rollout joins every layer's task first, and holding them all put every layer's origin fetch
and first uploads on one node's links and CPU."""

SUSPECT_HOLDER_SILENCE = 10.0
"""seconds without a report after which a lease holder that a child named in
``failed_parents`` loses the lease, before ``lease_ttl``: an agent reports at least every
5 s (its heartbeat) while it holds a lease, so a named holder that missed two is most likely
dead (one late heartbeat is not enough: any child may name the holder, truly or not), and
its blob's stream to the whole fleet waits for the lease to move (the simulator with 5% of
150 nodes dying: a fetcher dead at 1 s held the lease until 16 s)."""

FETCHER_SUSPECT_SILENCE = 5.0
"""the same, for a holder still fetching that has reported at least every half of this since
it took the lease: an agent reports each new piece hash at once and, while it fetches, at
least every 2 s (``FETCHER_HEARTBEAT``), so this silence is two missed reports or more; the
whole fleet waits on its blob meanwhile. A holder once slower than that (an agent of an
older version, whose heartbeat is 5 s, or one starved of CPU) keeps the longer silence."""

SCHEDULER_PAUSE = 2.0
"""seconds without a join or report after which this scheduler takes itself as paused (its
CPU starved, a burst of handshakes) or idle: a holder's silence for the suspect rules above
counts from the next call, so the holder's call queued behind a child's is not missed. A
rollout keeps the clock running: a fetcher reports every 2 s, and a dead one's children,
short of a parent, every second."""

REBALANCE_LOAD = 1.1
"""a handed parent with more links (downloaders naming it, over all tasks) than this many
times the average peer's may give way to a lighter one: parents are kept once handed, so a
peer that joined late in a wave was a parent of few (the simulator at 150 nodes: a tenth
of the nodes had at most 8 child links where the median had 37, their uploads idle while
others queued 8 links deep)"""
REBALANCE_EVERY = 3.0
"""seconds between two looks for a lighter parent for one downloader (each look costs a
small sample; every report looking took the scheduler's CPU up by about 40%)"""
REBALANCE_SAMPLE = 3
"""piece holders looked at for a lighter parent"""

ZONE_GATEWAYS = 1
"""members of a zone that are handed parents in other zones, per blob; every other member of
the zone gets parents in its own zone only, so the blob crosses into each zone about once
(the simulator: ``python -m bench.simulate --zones 3``)."""


INF = float("inf")


def _fast_builder[T](cls: type[T], names: tuple[str, ...]) -> Callable[..., T]:
    """A positional constructor of the frozen, slotted dataclass ``cls`` that sets each field
    through its slot's own descriptor: the generated ``__init__`` calls ``object.__setattr__``
    per field (the frozen guard), half of what building an answer cost. The same object:
    equal, hashed and frozen as one built by ``cls(...)``; the tests hold the two equal."""
    setters = [cls.__dict__[name].__set__ for name in names]
    new = object.__new__
    if [f.name for f in fields(cast("Any", cls))] != list(names):
        raise TypeError(f"{cls.__name__}: fields are not {names}")
    if hasattr(cls, "__post_init__"):
        # its checks would be skipped: a built object could hold what the constructor refuses
        raise TypeError(f"{cls.__name__}: has a __post_init__ the builder would not run")

    if len(names) == 4:
        s0, s1, s2, s3 = setters

        def build4(a: object, b: object, c: object, d: object) -> T:
            obj = new(cls)
            s0(obj, a)
            s1(obj, b)
            s2(obj, c)
            s3(obj, d)
            return obj

        return build4
    if len(names) == 8:
        t0, t1, t2, t3, t4, t5, t6, t7 = setters

        def build8(a: object, b: object, c: object, d: object, e: object, f: object, g: object, h: object) -> T:
            obj = new(cls)
            t0(obj, a)
            t1(obj, b)
            t2(obj, c)
            t3(obj, d)
            t4(obj, e)
            t5(obj, f)
            t6(obj, g)
            t7(obj, h)
            return obj

        return build8
    raise TypeError(f"{cls.__name__}: no builder of {len(names)} fields")


new_peer_info = _fast_builder(PeerInfo, ("peer_id", "address", "complete", "pieces"))
"""``PeerInfo(peer_id, address, complete, pieces)``, cheaper (a parent's, on most answers)"""
new_task_view = _fast_builder(
    TaskView, ("role", "parents", "size", "piece_size", "lease_ttl", "fetcher", "hashes_known", "fallback")
)
"""``TaskView(...)`` with every field positional, cheaper (built for every join and report)"""
new_candidate = cast("Callable[[type[Candidate], tuple[str, int, bool, int, bool]], Candidate]", tuple.__new__)
"""``Candidate``'s constructor without its Python-level ``__new__`` (the same tuple)"""


class StateError(ValueError):
    """A request the state cannot apply (rendered as a 4xx)."""


class UnknownTaskError(StateError):
    """A report for a task this scheduler does not know, without the blob's size to start it."""


class ConflictError(StateError):
    """A request whose blob size or piece size disagrees with the task's."""


class FullError(StateError):
    """A request that would start a task beyond ``max_tasks`` (rendered as 503: try later or the origin)."""


class PeerRecord:
    """One agent, shared by all its tasks."""

    __slots__ = (
        "address",
        "bucket_start",
        "current",
        "gateway_of",
        "leases",
        "links",
        "peer_id",
        "previous",
        "tasks",
        "zone",
    )

    def __init__(self, peer_id: str, address: str, zone: str = "") -> None:
        self.peer_id = peer_id
        self.address = address
        self.zone = zone
        """its topology zone ("" if unknown: then every peer counts as in its zone)"""
        self.gateway_of = 0
        """tasks whose blob this peer brings into its zone"""
        self.tasks = 0
        self.leases = 0
        """origin leases this peer holds, over all tasks"""
        self.links = 0
        """downloaders (over all tasks) whose handed parents name this peer now"""
        # Children handed this peer (its upload load) in a sliding window approximated by two
        # fixed buckets: O(1) memory however many children a popular parent gets.
        self.bucket_start = 0.0
        self.current = 0
        self.previous = 0

    def _roll(self, now: float, window: float) -> None:
        elapsed = now - self.bucket_start
        if elapsed >= window:
            self.previous = self.current if elapsed < 2 * window else 0
            self.current = 0
            self.bucket_start = now - elapsed % window if elapsed < 2 * window else now

    def children(self, now: float, window: float) -> int:
        """About how many children were handed this peer in the last ``window`` seconds."""
        if now - self.bucket_start >= window:  # _roll's test inlined: asked of every candidate
            self._roll(now, window)
        left = 1.0 - (now - self.bucket_start) / window
        return self.current + int(self.previous * left + 0.5)

    def assign(self, now: float, window: float) -> None:
        self._roll(now, window)
        self.current += 1


NONE, PARTIAL, SEEDER = 0, 1, 2


class Member:
    """One peer in one task."""

    __slots__ = (
        "children",
        "complete",
        "contiguous",
        "handed",
        "info",
        "kind",
        "last_seen",
        "moved_at",
        "peer",
        "pieces",
    )

    def __init__(self, peer: PeerRecord, now: float) -> None:
        self.peer = peer
        self.pieces = 0
        self.contiguous = 0
        self.complete = False
        self.last_seen = now
        self.handed: tuple[str, ...] = ()
        self.children: set[str] = set()
        """members of this task whose ``handed`` names this one (each is one of ``peer.links``):
        a member that goes is struck from their ``handed``, so no count outlives it"""
        self.moved_at = now
        """when one of its handed parents last gave way to a lighter one (or it joined)"""
        self.kind = NONE
        self.info: PeerInfo | None = None
        """this member as a parent in answers (built on first use, dropped on every update)."""

    def as_parent(self) -> PeerInfo:
        info = self.info
        if info is None:
            info = self.info = new_peer_info(self.peer.peer_id, self.peer.address, self.complete, self.pieces)
        return info


class Bag:
    """A set of peer ids with O(1) add, discard and random sampling."""

    __slots__ = ("index", "items")

    def __init__(self) -> None:
        self.items: list[str] = []
        self.index: dict[str, int] = {}

    def add(self, item: str) -> None:
        if item not in self.index:
            self.index[item] = len(self.items)
            self.items.append(item)

    def discard(self, item: str) -> None:
        pos = self.index.pop(item, None)
        if pos is None:
            return
        last = self.items.pop()
        if pos < len(self.items):
            self.items[pos] = last
            self.index[last] = pos

    def __len__(self) -> int:
        return len(self.items)

    def sample(self, k: int, rng: random.Random) -> list[str]:
        """Up to ``k`` items (all of them when there are no more than ``k``; else drawn with replacement).

        The draws are ``rng.choices(items, k=k)``'s own, without its call overhead (asked on
        most reports)."""
        items = self.items
        n = len(items)
        if n <= k:
            return list(items)
        draw = rng.random
        return [items[int(draw() * n)] for _ in range(k)]


@dataclass(frozen=True, slots=True)
class LeaseMove:
    digest: str
    old_holder: str
    new_holder: str
    reason: str


@dataclass(frozen=True, slots=True)
class HashReset:
    digest: str
    reporter: str
    blamed: tuple[str, ...]


@dataclass(slots=True)
class Task:
    digest: str
    size: int
    piece_size: int
    total: int
    last_active: float
    created: float = 0.0
    members: dict[str, Member] = field(default_factory=dict)
    """ordered by last contact, oldest first (each contact moves a member to the end)."""
    seeders: Bag = field(default_factory=Bag)
    partials: Bag = field(default_factory=Bag)
    joiners: Bag = field(default_factory=Bag)
    """members that hold no piece yet (parents too: they will, and they push what they get)"""
    gateways: dict[str, dict[str, None]] = field(default_factory=dict)
    """zone -> its members that were handed parents in other zones (ordered sets)"""
    holder: str | None = None
    holder_seen: float = 0.0
    holder_gap: float = 0.0
    """the longest silence between two calls of the holder since it took the lease (its pace)"""
    holder_progress_at: float = 0.0
    holder_contiguous: int = 0
    best: tuple[float, str | None] | None = None
    hashes: list[str | None] = field(default_factory=list)
    """empty until the first hash is published, then one entry per piece."""
    hashes_known: int = 0
    hash_run: int = 0
    """hashes known from piece 0 on without a gap (what most long-polls ask for)"""
    views: dict[int, HashesView] = field(default_factory=dict)
    """start -> the answer of ``hashes`` from it, shared until the hashes change (``SHARED_VIEWS``)"""
    suspects: dict[str, float] = field(default_factory=dict)
    """peer id -> until when it is not handed out."""
    publishers: dict[str, None] = field(default_factory=dict)
    """lease holders whose hashes were accepted, oldest first (an ordered set)."""
    hashes_reset_at: float = float("-inf")
    fallbacks: dict[str, float] = field(default_factory=dict)
    """fallback lease holders -> when their lease ends (renewed by each report)"""

    def bag(self, kind: int) -> Bag:
        return self.seeders if kind == SEEDER else self.partials if kind == PARTIAL else self.joiners


class SchedulerState:
    """All tasks of one scheduler. See the module docstring for the rules."""

    def __init__(self, config: SchedulerConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self.policy: ParentPolicy = PARENT_POLICIES[config.parent_policy]
        self.rng = rng or random.Random()
        self.tasks: dict[str, Task] = {}
        self.peers: dict[str, PeerRecord] = {}
        self.links = 0
        """parent links handed out now, over all tasks (the sum of every peer's ``links``)"""
        self.sample_size = max(16, 2 * config.max_parents)
        """candidates drawn from each of a task's seeders and partial holders when it has more."""
        self.joins = 0
        self.reports = 0
        self.lease_changes = 0
        self.hash_conflicts = 0
        """hashes that disagreed with one already known (the first is kept): a bad or buggy peer."""
        self.hashes_ignored = 0
        """hashes sent by peers that did not hold the lease."""
        self.lease_moves: list[LeaseMove] = []
        """leases taken from a live-but-late holder since the caller last cleared this (to log)."""
        self.hash_resets = 0
        """tasks whose hashes were dropped after a ``bad_hashes`` report blamed their publisher."""
        self.resets: list[HashReset] = []
        """hash resets since the caller last cleared this (to log)."""
        self.fallbacks_granted = 0
        self.fallbacks_refused = 0
        self._last_call_at = -INF
        self._resumed_at = -INF
        """the first join or report after ``SCHEDULER_PAUSE`` without one"""

    # -- calls -------------------------------------------------------------------------------
    def _called(self, now: float) -> None:
        if now - self._last_call_at > SCHEDULER_PAUSE:
            self._resumed_at = now
        self._last_call_at = now

    def join(self, digest: str, req: JoinRequest, now: float) -> TaskView:
        self._called(now)
        task = self._task(digest, req.size, req.piece_size, now, req.pieces, 0)
        complete = req.complete
        member = self._heard(
            task,
            req.peer_id,
            req.address,
            req.zone,
            now,
            task.total if complete else req.pieces,
            task.size if complete else None,
            complete,
        )
        self.joins += 1
        return self._answer(task, member, now)

    def report(self, digest: str, rep: Report, now: float) -> TaskView:
        if now - self._last_call_at > SCHEDULER_PAUSE:  # _called inlined: most calls are reports
            self._resumed_at = now
        self._last_call_at = now
        task = self.tasks.get(digest)
        if task is not None and rep.size and rep.size == task.size and rep.piece_size == task.piece_size:
            # _task's first case, inlined: nearly every call is a report of a known task
            if not 0 <= rep.pieces <= task.total or not 0 <= rep.contiguous <= task.size:
                self._check_progress(task.size, task.total, rep.pieces, rep.contiguous)
            task.last_active = now
        elif task is None and (rep.size <= 0 or rep.piece_size <= 0):
            raise UnknownTaskError(f"unknown task {digest}: report its size and piece_size, or join it")
        elif rep.size:
            task = self._task(digest, rep.size, rep.piece_size, now, rep.pieces, rep.contiguous)
        else:
            assert task is not None
            self._check_progress(task.size, task.total, rep.pieces, rep.contiguous)
        if rep.hashes:
            for index, value in rep.hashes.items():
                if not 0 <= index < task.total or not HASH_RE.fullmatch(value):
                    raise StateError(f"hash of piece {index}: want 0 <= index < {task.total} and 64 lowercase hex")
        complete = rep.complete
        member = self._heard(
            task,
            rep.peer_id,
            rep.address,
            rep.zone,
            now,
            task.total if complete else rep.pieces,
            task.size if complete else rep.contiguous,
            complete,
        )
        if rep.hashes:
            # only the holder as the report arrives: a complete seed that finds a scheduler
            # without hashes takes the open lease in this answer and sends them in its next.
            # A fallback lease holder that completed is trusted like the holder: the scheduler
            # chose it to read the registry, and it checked the blob against its digest
            # (without its hashes, the copy it made would be of no use to the stalled others)
            fell_back = rep.complete and task.fallbacks.get(rep.peer_id, 0.0) > now
            if task.holder == rep.peer_id or fell_back:
                self._add_hashes(task, rep.hashes, rep.peer_id)
            else:
                self.hashes_ignored += len(rep.hashes)
        if rep.bad_hashes and not self._suspect(task, rep.peer_id, now):
            self._distrust(task, rep.peer_id, rep.failed_parents, now)
        for suspect in rep.failed_parents:
            if suspect != rep.peer_id and (suspect in task.suspects or len(task.suspects) < MAX_SUSPECTS):
                task.suspects[suspect] = now + self.config.suspect_ttl
        self.reports += 1
        fallback = self._fallback(task, member, rep, now) if task.fallbacks or rep.wants_fallback else False
        # a peer reporting bad hashes refetches from the origin on its own: not as holder
        return self._answer(task, member, now, not rep.bad_hashes, fallback)

    def _fallback(self, task: Task, member: Member, rep: Report, now: float) -> bool:
        """Whether ``rep``'s peer holds (or now gets) one of the task's fallback leases.

        An ask is refused for a complete copy's sake only if the answer can name that copy: a
        live seeder no report has named failed. It becomes one of the asker's parents (its
        places may all be taken by peers stalled on the same missing pieces), and the agent
        that is refused so three times running reads the registry itself."""
        peer_id = rep.peer_id
        if task.fallbacks:
            for holder in [p for p, until in task.fallbacks.items() if until <= now]:
                del task.fallbacks[holder]
        if rep.complete:
            task.fallbacks.pop(peer_id, None)
            return False
        held = peer_id in task.fallbacks
        if held:
            task.fallbacks[peer_id] = now + self.config.lease_ttl
        if not rep.wants_fallback:
            return held
        if not held and len(task.seeders) and task.hashes_known == task.total:
            copy = self._reachable_copy(task, member, now)
            if copy is not None:
                # a complete copy is in the swarm (a fallback holder that finished, a seed) and
                # its pieces can be checked: the answer names it, no registry needed
                self._name_parent(task, member, copy, now)
                self.fallbacks_refused += 1
                return False
        if held or len(task.fallbacks) < self.config.fallback_leases:
            task.fallbacks[peer_id] = now + self.config.lease_ttl
            self.fallbacks_granted += 1
            return True
        self.fallbacks_refused += 1
        return False

    def _reachable_copy(self, task: Task, asker: Member, now: float) -> str | None:
        """A live seeder of ``task`` that no report named failed, other than ``asker``: one of
        its parents already if there is one, else one of its zone if there is one (naming the
        first found took a zone fed by its gateway into another zone beside its own copy)."""
        me, zone = asker.peer.peer_id, asker.peer.zone
        for peer_id in asker.handed:
            if (parent := self._usable_parent(task, peer_id, now)) is not None and parent.complete:
                return peer_id
        elsewhere: str | None = None
        for peer_id in task.seeders.items:
            if peer_id != me and (copy := self._usable_parent(task, peer_id, now)) is not None:
                if not zone or copy.peer.zone in ("", zone):
                    return peer_id
                elsewhere = elsewhere or peer_id
        return elsewhere

    def _name_parent(self, task: Task, member: Member, parent_id: str, now: float) -> None:
        """Make ``parent_id`` one of ``member``'s handed parents, in place of one no longer
        usable (gone, silent, suspect: the answer leaves it out anyway), else of the one
        holding the fewest pieces (the lease holder last) when every place is taken."""
        handed = member.handed
        if parent_id in handed:
            return
        kept = list(handed)
        if len(kept) >= self.config.max_parents:

            def worth(peer_id: str) -> tuple[bool, bool, int]:
                parent = self._usable_parent(task, peer_id, now)
                if parent is None:
                    return False, False, -1
                return True, peer_id == task.holder, parent.pieces

            kept.remove(min(kept, key=worth))
        task.members[parent_id].peer.assign(now, self.config.child_window)
        self._hand(task, member, (parent_id, *kept))

    def hashes(self, digest: str, start: int) -> HashesView:
        """Known piece hashes from ``start`` on, up to the first unknown one.

        The answer may be shared with other callers (and earlier ones): read it, never change it.
        """
        if start < 0:
            raise StateError(f"from={start}: want >= 0")
        task = self.tasks.get(digest)
        if task is None:
            return HashesView(start, [], 0)
        views = task.views
        view = views.get(start)
        if view is not None:
            return view
        if start <= task.hash_run:
            view = HashesView(start, cast("list[str]", task.hashes[start : task.hash_run]), task.total)
        else:
            known = task.hashes
            end = start
            while end < len(known) and known[end] is not None:
                end += 1
            view = HashesView(start, cast("list[str]", known[start:end]), task.total)
        if len(view.hashes) <= SHARED_RUN:
            if len(views) >= SHARED_VIEWS:
                views.clear()
            views[start] = view
        return view

    def leave(self, digest: str, peer_id: str) -> None:
        task = self.tasks.get(digest)
        if task is not None and peer_id in task.members:
            self._remove(task, peer_id)
            if not task.members and not task.hashes_known:
                del self.tasks[digest]

    def expire(self, now: float) -> None:
        """Drop peers not heard from for ``peer_ttl``, stale suspects, and idle tasks."""
        cutoff = now - self.config.peer_ttl
        for digest, task in list(self.tasks.items()):
            if now - task.last_active > self.config.task_ttl:
                for peer_id in list(task.members):
                    self._remove(task, peer_id)
                del self.tasks[digest]
                continue
            dead: list[str] = []
            for peer_id, member in task.members.items():
                if member.last_seen >= cutoff:
                    break
                dead.append(peer_id)
            for peer_id in dead:
                self._remove(task, peer_id)
            if task.suspects:
                task.suspects = {p: until for p, until in task.suspects.items() if until > now}
            if not task.members and not task.hashes_known:
                del self.tasks[digest]

    def stats(self) -> Stats:
        return Stats(
            tasks=len(self.tasks),
            peers=len(self.peers),
            lease_changes=self.lease_changes,
            joins=self.joins,
            reports=self.reports,
        )

    # -- bookkeeping -------------------------------------------------------------------------
    def _task(self, digest: str, size: int, piece_size: int, now: float, pieces: int, contiguous: int) -> Task:
        """The task of ``digest``, started if new; every check comes first, so a refused call leaves no task."""
        task = self.tasks.get(digest)
        if task is not None and size == task.size and piece_size == task.piece_size:
            # sizes checked when the task started: only the progress is new (every report says the size)
            self._check_progress(size, task.total, pieces, contiguous)
            task.last_active = now
            return task
        if not 0 <= size <= self.config.max_blob_size:
            raise StateError(f"size {size}: want 0..{self.config.max_blob_size} bytes")
        if piece_size != choose_piece_size(size):
            raise StateError(f"piece_size {piece_size}: a blob of {size} bytes has pieces of {choose_piece_size(size)}")
        total = piece_count(size, piece_size)
        self._check_progress(size, total, pieces, contiguous)
        if task is None:
            if len(self.tasks) >= self.config.max_tasks:
                raise FullError(f"scheduler full: {len(self.tasks)} tasks; fetch {digest} from the origin")
            task = Task(digest, size, piece_size, total, last_active=now, created=now)
            self.tasks[digest] = task
        elif (size, piece_size) != (task.size, task.piece_size):
            raise ConflictError(
                f"task {digest} has size {task.size} and piece_size {task.piece_size}, not {size} and {piece_size}"
            )
        task.last_active = now
        return task

    @staticmethod
    def _check_progress(size: int, total: int, pieces: int, contiguous: int) -> None:
        if not 0 <= pieces <= total or not 0 <= contiguous <= size:
            raise StateError(
                f"pieces {pieces} / contiguous {contiguous} outside a blob of {size} bytes ({total} pieces)"
            )

    def _heard(
        self,
        task: Task,
        peer_id: str,
        address: str,
        zone: str,
        now: float,
        pieces: int,
        contiguous: int | None,
        complete: bool,
    ) -> Member:
        """The member that joined or reported, with its new progress (``contiguous`` None: as
        it was), moved to the end of the task's members, in the right bag, the lease holder's
        progress noted. One call for all of it: every join and report starts here."""
        member = task.members.pop(peer_id, None)
        if member is None:
            peer = self.peers.get(peer_id)
            if peer is None:
                peer = self.peers[peer_id] = PeerRecord(peer_id, address, zone)
            peer.tasks += 1
            member = Member(peer, now)
            task.joiners.add(peer_id)
        if zone and member.peer.zone != zone:
            member.peer.zone = zone
        if member.peer.address != address:
            member.peer.address = address
            for other in self.tasks.values():
                if (stale := other.members.get(peer_id)) is not None:
                    stale.info = None
        member.last_seen = now
        member.info = None
        task.members[peer_id] = member
        member.pieces = pieces
        if contiguous is not None:
            member.contiguous = contiguous
        member.complete = complete
        kind = SEEDER if complete else PARTIAL if pieces > 0 else NONE
        if kind != member.kind:
            task.bag(member.kind).discard(peer_id)
            task.bag(kind).add(peer_id)
            member.kind = kind
        if task.holder == peer_id:
            # on the plain clock: a pause of the scheduler may make a live holder look slow
            # (the longer silence: safe), and an idle scheduler must not erase a slow pace
            task.holder_gap = max(task.holder_gap, now - task.holder_seen)
            task.holder_seen = now
            if member.contiguous > task.holder_contiguous:
                task.holder_contiguous = member.contiguous
                task.holder_progress_at = now
        return member

    def _remove(self, task: Task, peer_id: str) -> None:
        member = task.members.pop(peer_id)
        self._hand(task, member, ())
        if member.children:
            # its children name it no more: their next answer fills the place
            members = task.members
            for child_id in member.children:
                child = members[child_id]
                child.handed = tuple(p for p in child.handed if p != peer_id)
            member.peer.links -= len(member.children)
            self.links -= len(member.children)
            member.children.clear()
        task.seeders.discard(peer_id)
        task.partials.discard(peer_id)
        task.joiners.discard(peer_id)
        if task.holder == peer_id:
            self._set_holder(task, None)
        peer = member.peer
        peer.tasks -= 1
        if peer.tasks <= 0:
            self.peers.pop(peer_id, None)

    def _add_hashes(self, task: Task, hashes: dict[int, str], publisher: str) -> None:
        if not task.hashes:
            task.hashes = [None] * task.total
        task.publishers.pop(publisher, None)
        task.publishers[publisher] = None
        if len(task.publishers) > MAX_PUBLISHERS:
            del task.publishers[next(iter(task.publishers))]
        for index, value in hashes.items():
            known = task.hashes[index]
            if known is None:
                task.hashes[index] = value
                task.hashes_known += 1
                task.views.clear()
            elif known != value:
                self.hash_conflicts += 1
        while task.hash_run < task.total and task.hashes[task.hash_run] is not None:
            task.hash_run += 1

    def _distrust(self, task: Task, reporter: str, named: list[str], now: float) -> None:
        """Drop the task's hashes when ``named`` includes a peer that published some."""
        blamed = tuple(p for p in named if p in task.publishers and p != reporter)
        if not blamed or not task.hashes_known or now - task.hashes_reset_at < self.config.lease_ttl:
            return
        task.hashes, task.hashes_known, task.hashes_reset_at, task.hash_run = [], 0, now, 0
        task.views.clear()
        task.publishers.clear()
        if task.holder in blamed:
            self._set_holder(task, None)
        task.best = None
        self.hash_resets += 1
        self.resets.append(HashReset(task.digest, reporter, blamed))

    # -- answers -----------------------------------------------------------------------------
    def _answer(
        self, task: Task, member: Member, now: float, may_take: bool = True, fallback: bool = False
    ) -> TaskView:
        held = now - task.holder_seen
        if (
            task.holder is None
            or task.hashes_known >= task.total
            or held > self.config.lease_ttl
            or held > self._suspect_silence(task)
            or now - task.holder_progress_at > self.config.stall_timeout
        ):
            # else the lease is surely where it stays (a holder heard from lately, still
            # making progress, hashes still wanted): most calls of a rollout, spared the call
            self._settle_lease(task, member, now, may_take)
        if member.complete:
            if member.handed:
                self._hand(task, member, ())
            parents = []
        else:
            parents = self._parents(task, member, now)
        holder = task.holder
        # positional: the view is built for every call (its fields, in order: role, parents,
        # size, piece_size, lease_ttl, fetcher, hashes_known, fallback)
        return new_task_view(
            "fetcher" if holder == member.peer.peer_id else "peer",
            parents,
            task.size,
            task.piece_size,
            self.config.lease_ttl,
            holder,
            task.hashes_known,
            fallback,
        )

    def _silent_suspect(self, task: Task, now: float) -> bool:
        """Whether the holder, if named in ``failed_parents``, has been silent too long: time
        this scheduler itself answered nobody does not count (the calls queued meanwhile come
        in together, a child's before the holder's)."""
        return now - max(task.holder_seen, self._resumed_at) > self._suspect_silence(task)

    @staticmethod
    def _suspect_silence(task: Task) -> float:
        """How long a lease holder named in ``failed_parents`` may go without a report."""
        if task.hashes_known < task.total and task.holder_gap <= FETCHER_SUSPECT_SILENCE / 2:
            return FETCHER_SUSPECT_SILENCE
        return SUSPECT_HOLDER_SILENCE

    def _suspect(self, task: Task, peer_id: str, now: float) -> bool:
        if not task.suspects:
            return False
        until = task.suspects.get(peer_id)
        return until is not None and until > now

    def _live_seeder(self, task: Task, now: float) -> bool:
        """Whether a complete peer of ``task`` was heard from within ``peer_ttl`` (within
        ``lease_ttl`` if a child named it failed: a live seed announces itself every 10 s)."""
        cutoff = now - self.config.peer_ttl
        members = task.members
        suspects = task.suspects
        # a loop, not any() over a generator: asked on every call once the hashes are known
        for peer_id in task.seeders.items:
            seen = members[peer_id].last_seen
            if seen >= cutoff and not (suspects and self._silent_copy(task, peer_id, seen, now)):
                return True
        return False

    def _silent_copy(self, task: Task, peer_id: str, seen: float, now: float) -> bool:
        """Whether a complete peer named in ``failed_parents`` has been silent for ``lease_ttl``
        (counted as a holder's ``lease_ttl`` is, not from a pause of this scheduler: stalled
        children report in step every 5 s, and each gap looked like one)."""
        return now - seen > self.config.lease_ttl and self._suspect(task, peer_id, now)

    def _settle_lease(self, task: Task, requester: Member, now: float, may_take: bool) -> None:
        if task.hashes_known >= task.total and self._live_seeder(task, now):
            # the lease is not needed: every hash known, and a live peer holds the whole blob
            if task.holder is not None:
                self._set_holder(task, None)
            return
        stale: str | None = None
        why = ""
        if task.holder is not None:
            holder = task.members.get(task.holder)
            if holder is None or (holder.complete and task.hashes_known >= task.total):
                self._set_holder(task, None)
            else:
                # each rule asked once: the first that holds says why the lease moves
                if now - task.holder_seen > self.config.lease_ttl:
                    why = f"no report for {now - task.holder_seen:.1f}s"
                elif self._silent_suspect(task, now) and self._suspect(task, task.holder, now):
                    why = f"named in failed_parents and no report for {now - task.holder_seen:.1f}s"
                elif now - task.holder_progress_at > self.config.stall_timeout:
                    why = f"no progress for {now - task.holder_progress_at:.1f}s"
                else:
                    return
                stale = task.holder
        peer_id = requester.peer.peer_id
        if not may_take or not self._may_fetch(task, requester, now) or peer_id == stale:
            return
        if requester.peer.leases > 0 and not requester.complete and now - task.created < LEASE_SPREAD_WAIT:
            return
        best = self._best_candidate(task, stale, now)
        if best is not None and best != peer_id and self._lease_rank(task.members[best]) > self._lease_rank(requester):
            return
        if stale is not None:
            self.lease_moves.append(LeaseMove(task.digest, stale, peer_id, why))
        self._set_holder(task, peer_id)
        task.holder_seen = task.holder_progress_at = now
        task.holder_gap = 0.0
        task.holder_contiguous = requester.contiguous
        task.best = None
        self.lease_changes += 1

    def _set_holder(self, task: Task, peer_id: str | None) -> None:
        if task.holder is not None and (old := self.peers.get(task.holder)) is not None:
            old.leases -= 1
        task.holder = peer_id
        if peer_id is not None:
            self.peers[peer_id].leases += 1

    @staticmethod
    def _lease_rank(member: Member) -> tuple[bool, int]:
        """Who should fetch from the origin: peers without another lease first, then the one
        holding the most contiguous bytes."""
        return member.peer.leases == 0, member.contiguous

    def _may_fetch(self, task: Task, member: Member, now: float) -> bool:
        """May hold the lease: live, not suspect, and not complete unless hashes are missing."""
        return (
            (not member.complete or task.hashes_known < task.total)
            and now - member.last_seen <= self.config.lease_ttl
            and not self._suspect(task, member.peer.peer_id, now)
        )

    def _best_candidate(self, task: Task, stale: str | None, now: float) -> str | None:
        """The peer that should take the open lease (cached briefly: it scans the task)."""
        if task.best is not None:
            computed_at, best = task.best
            member = task.members.get(best) if best is not None else None
            still_good = best is None or (member is not None and self._may_fetch(task, member, now))
            if now - computed_at <= BEST_CACHE_SECONDS and still_good:
                return best
        best = None
        most = (False, -1)
        for peer_id, member in task.members.items():
            rank = self._lease_rank(member)
            if peer_id != stale and rank > most and self._may_fetch(task, member, now):
                best, most = peer_id, rank
        task.best = (now, best)
        return best

    def _usable_parent(self, task: Task, peer_id: str, now: float) -> Member | None:
        member = task.members.get(peer_id)
        if member is None or now - member.last_seen > self.config.peer_ttl or self._suspect(task, peer_id, now):
            return None
        return member

    def _zone_fed(self, task: Task, zone: str, now: float) -> bool:
        """Whether ``zone`` has ``ZONE_GATEWAYS`` live members taking this blob from other zones
        (gone or silent ones are forgotten, so another member takes over)."""
        gateways = task.gateways.get(zone)
        if not gateways:
            return False
        for peer_id in list(gateways):
            if self._usable_parent(task, peer_id, now) is None:
                del gateways[peer_id]
                if (peer := self.peers.get(peer_id)) is not None:
                    peer.gateway_of -= 1
        return len(gateways) >= ZONE_GATEWAYS

    def _parents(self, task: Task, member: Member, now: float) -> list[PeerInfo]:
        limit = self.config.max_parents
        handed = member.handed
        # _usable_parent inlined: every report of a download walks its parents here
        members, ttl, suspects = task.members, self.config.peer_ttl, task.suspects
        if len(handed) == limit and now - member.moved_at < REBALANCE_EVERY:
            # most reports: every place filled and no look for lighter parents due; the answer
            # is the handed parents if they are all still usable (else the full walk below)
            infos: list[PeerInfo] = []
            for peer_id in handed:
                parent = members.get(peer_id)
                if parent is None or now - parent.last_seen > ttl or (suspects and self._suspect(task, peer_id, now)):
                    break
                infos.append(info if (info := parent.info) is not None else parent.as_parent())
            else:
                return infos
        me = member.peer.peer_id
        chosen: dict[str, Member] = {}
        kept = True
        """whether ``chosen`` is still ``handed`` (then nothing to re-hand)"""
        heavy = INF
        if handed and now - member.moved_at >= REBALANCE_EVERY and self.peers:
            heavy = REBALANCE_LOAD * self.links / len(self.peers)
        moves = len(handed) - 1 if len(handed) > 1 else 1
        for peer_id in handed:
            parent = members.get(peer_id)
            if parent is None or now - parent.last_seen > ttl or (suspects and self._suspect(task, peer_id, now)):
                kept = False
                continue
            if parent.peer.links > heavy and not parent.complete and task.holder != peer_id and moves > 0:
                # every heavy parent but one gives way in one look (one look per
                # REBALANCE_EVERY): the first to join a rollout are each other's parents and
                # every later joiner's, and one move per look left them on busy parents for
                # the whole rollout. The answer still names one of the downloader's parents,
                # so it swaps one per answer and reports again (an answer naming none of its
                # parents is taken for a failover's and swaps nothing)
                moves -= 1
                member.moved_at = now
                lighter = self._lighter(task, member, parent, chosen, now)
                if lighter is not None:
                    kept = False
                    parent = lighter
                    peer_id = lighter.peer.peer_id
                    lighter.peer.assign(now, self.config.child_window)
            chosen[peer_id] = parent  # no more than ``limit``: ``handed`` was a ``chosen``
        if len(chosen) < limit:
            kept = False
            # a sample per bag sized by the places to fill: a report that needs one more parent
            # need not look at dozens (the rollout's reports are most of the scheduler's work)
            k = min(self.sample_size, 4 + 2 * (limit - len(chosen)))
            rng = self.rng
            pool = task.seeders.sample(k, rng) + task.partials.sample(k, rng) + task.joiners.sample(k, rng)
            if task.holder is not None:
                pool.append(task.holder)
            zone = member.peer.zone
            # a peer that already brings another blob into its zone leaves a young task's to
            # another member (the first node of a rollout joins every layer first: as the
            # gateway of all of them, its links carried every layer's first copy into the
            # zone); after LEASE_SPREAD_WAIT it may take it (a zone of one node)
            spread = member.peer.gateway_of > 0 and now - task.created < LEASE_SPREAD_WAIT
            local_only = (
                bool(zone) and me not in task.gateways.get(zone, ()) and (spread or self._zone_fed(task, zone, now))
            )
            window = self.config.child_window
            candidates: list[Candidate] = []
            found: dict[str, Member] = {}
            for peer_id in pool:
                if peer_id == me or peer_id in chosen or peer_id in found:
                    continue
                parent = members.get(peer_id)
                if parent is None or now - parent.last_seen > ttl or (suspects and self._suspect(task, peer_id, now)):
                    continue
                same_zone = not zone or parent.peer.zone in ("", zone)
                if local_only and not same_zone:
                    continue
                found[peer_id] = parent
                # Candidate's constructor bypassed (the same tuple): a join builds about a dozen
                children = parent.peer.children(now, window)
                candidates.append(
                    new_candidate(Candidate, (peer_id, parent.pieces, parent.complete, children, same_zone))
                )
            picked = (
                self.policy(candidates, limit=limit - len(chosen), max_children=self.config.max_children, rng=self.rng)
                if candidates
                else []
            )
            for peer_id in picked:
                chosen[peer_id] = found[peer_id]
                found[peer_id].peer.assign(now, window)
                if zone and found[peer_id].peer.zone not in ("", zone) and me not in task.gateways.get(zone, ()):
                    task.gateways.setdefault(zone, {})[me] = None
                    member.peer.gateway_of += 1
        if not kept:
            self._hand(task, member, tuple(chosen))
        return [info if (info := p.info) is not None else p.as_parent() for p in chosen.values()]

    def _lighter(
        self, task: Task, member: Member, heavy: Member, chosen: dict[str, Member], now: float
    ) -> Member | None:
        """A piece holder of the heavy parent's zone with far fewer links, from a small sample."""
        best: Member | None = None
        me = member.peer.peer_id
        members, ttl, suspects = task.members, self.config.peer_ttl, task.suspects
        for peer_id in task.partials.sample(REBALANCE_SAMPLE, self.rng):
            if peer_id == me or peer_id in chosen or peer_id in member.handed:
                continue
            # _usable_parent inlined (a look asks it of every sampled holder)
            other = members.get(peer_id)
            if other is None or now - other.last_seen > ttl or (suspects and self._suspect(task, peer_id, now)):
                continue
            if other.peer.zone != heavy.peer.zone:
                continue
            if other.pieces <= member.pieces and other.pieces < heavy.pieces:
                continue  # nothing new for the child, or less than the heavy parent offers
            if other.peer.links * 10 < heavy.peer.links * 7 and (best is None or other.peer.links < best.peer.links):
                best = other
        return best

    def _hand(self, task: Task, member: Member, parents: tuple[str, ...]) -> None:
        """Make ``parents`` (members of ``task``) the member's handed parents, counting each
        parent's links."""
        old = member.handed
        if old == parents:
            return
        members = task.members
        me = member.peer.peer_id
        for peer_id in old:
            if peer_id not in parents and (parent := members.get(peer_id)) is not None and me in parent.children:
                parent.children.discard(me)
                parent.peer.links -= 1
                self.links -= 1
        for peer_id in parents:
            if peer_id not in old and (parent := members.get(peer_id)) is not None and me not in parent.children:
                parent.children.add(me)
                parent.peer.links += 1
                self.links += 1
        member.handed = parents
