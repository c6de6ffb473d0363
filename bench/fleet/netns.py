"""The lab: one network namespace per node on a private bridge, and its teardown.

Layout (``<rid>`` is a 4-hex-digit run id, so parallel runs never collide)::

    bridge  shoalbr<rid>           (root namespace, no address, IPv6 off)
    netns   shoal-<rid>-origin     10.77.0.1/16   the registry, the BitTorrent seeder
    netns   shoal-<rid>-svc        10.77.0.2/16   scheduler, tracker (control traffic only)
    netns   shoal-<rid>-n<i>       10.77.<1+i//250>.<1+i%250>/16   node i

Each namespace has ``lo`` up and ``eth0`` (one end of a veth pair); the other end,
``shoalv<rid><role>``, is a port of the bridge. No namespace has a default route, the root
namespace has no address on the bridge, and nothing forwards: lab traffic stays on the bridge.

A small state file under ``/run/shoal-fleet/`` records which process owns a run, so
``--cleanup`` removes only runs whose owner is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "STATE_DIR",
    "Host",
    "Lab",
    "LabPlan",
    "cleanup_leftovers",
    "deferred_signals",
    "plan_lab",
]

STATE_DIR = Path("/run/shoal-fleet")
SUBNET_PREFIX = "10.77"
NETNS_RE = re.compile(r"^shoal-([0-9a-f]{4})-(origin|svc|n\d+)$")
BRIDGE_RE = re.compile(r"^shoalbr([0-9a-f]{4})$")


@dataclass(frozen=True, slots=True)
class Host:
    """One namespace of the lab and its link caps (bits per second; 0 = unshaped)."""

    role: str
    """``origin``, ``svc`` or ``n<i>``."""
    netns: str
    ip: str
    veth: str
    """The bridge-side end of the veth pair, in the root namespace."""
    upload_bps: int
    download_bps: int

    @property
    def shaped(self) -> bool:
        return self.upload_bps > 0


@dataclass(frozen=True, slots=True)
class LabPlan:
    """Names and addresses of a lab, decided before anything is created."""

    run_id: str
    bridge: str
    origin: Host
    svc: Host
    nodes: tuple[Host, ...]

    @property
    def hosts(self) -> tuple[Host, ...]:
        return (self.origin, self.svc, *self.nodes)


def node_ip(index: int) -> str:
    if not 0 <= index < 250 * 254:
        raise ValueError(f"node index out of range: {index}")
    return f"{SUBNET_PREFIX}.{1 + index // 250}.{1 + index % 250}"


def slow_nodes(count: int) -> frozenset[int]:
    """The heterogeneous fleet: every fourth node (indices 3, 7, ...), a quarter of the fleet."""
    return frozenset(i for i in range(count) if i % 4 == 3)


def plan_lab(
    nodes: int,
    *,
    node_bps: int,
    origin_bps: int,
    heterogeneous: bool = False,
    run_id: str | None = None,
) -> LabPlan:
    """Decide names, addresses and caps; ``heterogeneous`` puts a quarter at a quarter rate."""
    if nodes < 1:
        raise ValueError("a fleet needs at least one node")
    rid = run_id or secrets.token_hex(2)
    if not re.fullmatch(r"[0-9a-f]{4}", rid):
        raise ValueError(f"run id must be 4 hex digits, not {rid!r}")
    slow = slow_nodes(nodes) if heterogeneous else frozenset()

    def host(role: str, ip: str, bps: int) -> Host:
        short = {"origin": "o", "svc": "s"}.get(role, role)
        return Host(role, f"shoal-{rid}-{role}", ip, f"shoalv{rid}{short}", bps, bps)

    return LabPlan(
        run_id=rid,
        bridge=f"shoalbr{rid}",
        origin=host("origin", f"{SUBNET_PREFIX}.0.1", origin_bps),
        svc=host("svc", f"{SUBNET_PREFIX}.0.2", 0),
        nodes=tuple(host(f"n{i}", node_ip(i), node_bps // 4 if i in slow else node_bps) for i in range(nodes)),
    )


def _run(argv: Sequence[str], *, stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False, timeout=600)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])} ... failed: {proc.stderr.strip()[:2000]}")
    return proc.stdout


def ip_batch(lines: Sequence[str], netns: str | None = None) -> None:
    """Run ``ip -batch -`` (in ``netns`` if given), one command per line."""
    if not lines:
        return
    prefix = ["ip", "-n", netns] if netns else ["ip"]
    _run([*prefix, "-batch", "-"], stdin="\n".join(lines) + "\n")


def list_netns() -> list[str]:
    out = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(netns: str) -> list[int]:
    out = _run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def _write_sysctl(path: str, value: str) -> None:
    with contextlib.suppress(OSError):
        Path(path).write_text(value)


NEIGH = "/proc/sys/net/ipv4/neigh/default/gc_thresh{}"


def neighbour_thresholds(hosts: int) -> tuple[int, int, int]:
    """gc_thresh1..3 for a lab of ``hosts`` namespaces that all talk to each other.

    The kernel's ARP table is one for all network namespaces, and its hard limit (gc_thresh3,
    1024 by default) counts every namespace's entries: a 40-node full mesh needs about 1,640.
    Past it, new entries are refused ("neighbor table overflow"), and connections between
    the nodes left out time out or fail with EHOSTUNREACH. Each node of a real cluster has its
    own table; the lab makes room for the same.
    """
    need = hosts * (hosts + 2)
    return max(128, need // 4), max(512, need * 2), max(1024, need * 4)


def _raise_neighbour_limits(hosts: int) -> None:
    for i, value in enumerate(neighbour_thresholds(hosts), start=1):
        path = Path(NEIGH.format(i))
        with contextlib.suppress(OSError, ValueError):
            if int(path.read_text()) < value:
                path.write_text(str(value))


@dataclass
class Lab:
    """Creates a :class:`LabPlan` on this machine; use as a context manager."""

    plan: LabPlan

    @property
    def state_file(self) -> Path:
        return STATE_DIR / f"{self.plan.run_id}.json"

    def __enter__(self) -> Lab:
        try:
            self.create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        with deferred_signals():
            self.destroy()

    def create(self) -> None:
        plan = self.plan
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        state = {"owner_pid": os.getpid(), "netns": [h.netns for h in plan.hosts]}
        self.state_file.write_text(json.dumps({**state, "bridge": plan.bridge}))
        if plan.bridge in _links():
            raise RuntimeError(f"bridge {plan.bridge} exists already: another run uses this id")
        _raise_neighbour_limits(len(plan.hosts))
        ip_batch([f"link add {plan.bridge} type bridge", *(f"netns add {h.netns}" for h in plan.hosts)])
        _write_sysctl(f"/proc/sys/net/ipv6/conf/{plan.bridge}/disable_ipv6", "1")
        links = []
        for h in plan.hosts:
            links += [
                f"link add {h.veth} type veth peer name eth0 netns {h.netns}",
                f"link set {h.veth} master {plan.bridge}",
                f"link set {h.veth} up",
            ]
        links.append(f"link set {plan.bridge} up")
        ip_batch(links)
        for h in plan.hosts:
            _write_sysctl(f"/proc/sys/net/ipv6/conf/{h.veth}/disable_ipv6", "1")
            ip_batch(
                [
                    f"addr add {h.ip}/16 dev eth0",
                    "link set lo up",
                    "link set eth0 up",
                ],
                netns=h.netns,
            )
            # No IPv6 chatter (router solicitations, MLD) on the shaped links.
            _run(
                [
                    "ip",
                    "netns",
                    "exec",
                    h.netns,
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ],
                check=False,
            )

    def destroy(self) -> None:
        """Kill whatever still runs in our namespaces, then delete them and the bridge."""
        for h in self.plan.hosts:
            if h.netns in list_netns():
                _kill_pids(netns_pids(h.netns))
                _run(["ip", "netns", "del", h.netns], check=False)
        links = _links()
        for h in self.plan.hosts:
            if h.veth in links:
                _run(["ip", "link", "del", h.veth], check=False)
        if self.plan.bridge in links:
            _run(["ip", "link", "del", self.plan.bridge], check=False)
        self.state_file.unlink(missing_ok=True)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold Ctrl-C/SIGTERM/SIGHUP until the block is done (a teardown is not interrupted)."""
    sigs = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _links() -> set[str]:
    out = _run(["ip", "-o", "link", "show"], check=False)
    names = set()
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.add(parts[1].strip().split("@")[0])
    return names


def _kill_pids(pids: Sequence[int]) -> None:
    """SIGKILL exactly these PIDs (processes found inside one of our own namespaces)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, 9)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale_runs(force: bool) -> Iterator[str]:
    """Run ids with lab objects whose owner is gone (or that have no state file)."""
    ids = {m.group(1) for n in list_netns() if (m := NETNS_RE.match(n))}
    ids |= {m.group(1) for n in _links() if (m := BRIDGE_RE.match(n))}
    if STATE_DIR.is_dir():
        ids |= {p.stem for p in STATE_DIR.glob("*.json")}
    for rid in sorted(ids):
        state_file = STATE_DIR / f"{rid}.json"
        owner = None
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            owner = int(json.loads(state_file.read_text())["owner_pid"])
        if force or owner is None or not _pid_alive(owner):
            yield rid


def cleanup_leftovers(*, force: bool = False) -> list[str]:
    """Remove namespaces, veths and bridges of dead runs; return what was removed."""
    removed: list[str] = []
    stale = set(_stale_runs(force))
    for ns in list_netns():
        m = NETNS_RE.match(ns)
        if m and m.group(1) in stale:
            _kill_pids(netns_pids(ns))
            _run(["ip", "netns", "del", ns], check=False)
            removed.append(ns)
    for link in sorted(_links()):
        m = BRIDGE_RE.match(link) or re.match(r"^shoalv([0-9a-f]{4})", link)
        if m and m.group(1) in stale:
            _run(["ip", "link", "del", link], check=False)
            removed.append(link)
    for rid in stale:
        (STATE_DIR / f"{rid}.json").unlink(missing_ok=True)
    return removed
