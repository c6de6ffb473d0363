"""Bandwidth caps with ``tc``: HTB on both ends of every veth, one class per peer.

Inside a node's namespace, ``eth0`` egress is the node's **upload**; on the bridge side, the
veth's egress is the node's **download**. Under each root class (rate = ceil = the cap) sits
one leaf class per other host of the lab, chosen by a u32 filter on the peer's address
(destination inside, source outside): every leaf is guaranteed cap/peers and may borrow up
to the cap, with equal quanta, so concurrent flows to or from different peers share fairly.
With a single FIFO leaf TCP splits a cap very unevenly (162/7/7/7/7 Mbit/s seen, LAB.md).
Unmatched traffic (ARP) goes to a small default class.

This kernel has no netem/sfq/fq_codel/fq/cake, so there is no latency or loss emulation.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence

from bench.fleet.netns import Host, LabPlan

__all__ = ["apply_shaping", "format_rate", "htb_commands", "parse_rate"]

_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit|k|m|g)?\s*$", re.IGNORECASE)
_RATE_UNITS = {"": 1, "bit": 1, "k": 10**3, "kbit": 10**3, "m": 10**6, "mbit": 10**6, "g": 10**9, "gbit": 10**9}
_QUANTUM = 60000
DEFAULT_CLASS = 0xFFFF
ARP_CLASS = 0xFFFE
FIRST_PEER_CLASS = 0x10


def parse_rate(text: str) -> int:
    """Bits per second from ``200mbit``, ``1gbit``, ``50m`` (decimal, as ``tc`` reads them)."""
    match = _RATE_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid rate {text!r}: want e.g. 200mbit, 1gbit, 500kbit")
    number, unit = match.groups()
    bps = int(float(number) * _RATE_UNITS[(unit or "").lower()])
    if bps <= 0:
        raise ValueError(f"rate must be positive: {text!r}")
    return bps


def format_rate(bps: float) -> str:
    """``200000000`` -> ``"200 Mbit/s"``."""
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.4g} {unit}"
    return f"{bps:.0f} bit/s"


def _burst(bps: int) -> int:
    # At least one GSO super-packet (64 KiB), or 2 ms at the rate; HTB's default burst is
    # too small at hundreds of Mbit/s and makes a class run well below its rate.
    return max(65536 + 1600, bps // 8 // 500)


def htb_commands(dev: str, cap_bps: int, peers: Sequence[str], *, match: str) -> list[str]:
    """``tc -batch`` lines: an HTB tree on ``dev`` capping it at ``cap_bps``, fair per peer.

    ``match`` is ``dst`` (egress inside a namespace, per destination) or ``src`` (egress on
    the bridge side, per source).
    """
    if match not in ("dst", "src"):
        raise ValueError("match must be 'dst' or 'src'")
    if cap_bps <= 0:
        raise ValueError("cap must be positive")
    if len(peers) > ARP_CLASS - FIRST_PEER_CLASS:
        raise ValueError("too many peers for one HTB tree")
    burst = _burst(cap_bps)
    share = max(1000, cap_bps // max(1, len(peers)))
    lines = [
        f"qdisc replace dev {dev} root handle 1: htb default {DEFAULT_CLASS:x}",
        f"class add dev {dev} parent 1: classid 1:1 htb rate {cap_bps}bit ceil {cap_bps}bit"
        f" burst {burst} cburst {burst}",
        f"class add dev {dev} parent 1:1 classid 1:{DEFAULT_CLASS:x} htb rate 1000bit"
        f" ceil {cap_bps}bit burst {burst} cburst {burst} quantum {_QUANTUM}",
        # ARP first, at a guaranteed rate: in the default class (1 kbit/s guaranteed) a busy
        # link starved it, neighbour entries expired, and new connections between nodes
        # failed with timeouts and EHOSTUNREACH (a switch does not shape ARP)
        f"class add dev {dev} parent 1:1 classid 1:{ARP_CLASS:x} htb rate {max(8000, cap_bps // 100)}bit"
        f" ceil {cap_bps}bit burst {burst} cburst {burst} prio 0",
        f"filter add dev {dev} parent 1: protocol arp prio 2 u32 match u32 0 0 flowid 1:{ARP_CLASS:x}",
    ]
    for k, peer in enumerate(peers):
        classid = f"1:{FIRST_PEER_CLASS + k:x}"
        lines += [
            f"class add dev {dev} parent 1:1 classid {classid} htb rate {share}bit"
            f" ceil {cap_bps}bit burst {burst} cburst {burst} quantum {_QUANTUM}",
            f"filter add dev {dev} parent 1: protocol ip prio 1 u32 match ip {match} {peer}/32 flowid {classid}",
        ]
    return lines


def _tc_batch(lines: Sequence[str], netns: str | None) -> None:
    prefix = ["tc", "-n", netns] if netns else ["tc"]
    proc = subprocess.run(
        [*prefix, "-batch", "-"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"tc -batch failed in {netns or 'root'}: {proc.stderr.strip()[:2000]}")


def apply_shaping(plan: LabPlan) -> None:
    """Cap every shaped host's upload (inside) and download (bridge side)."""
    root_lines: list[str] = []
    for h in plan.hosts:
        if not h.shaped:
            continue
        peers = [p.ip for p in plan.hosts if p is not h]
        _tc_batch(htb_commands("eth0", h.upload_bps, peers, match="dst"), h.netns)
        root_lines += htb_commands(h.veth, h.download_bps, peers, match="src")
    _tc_batch(root_lines, None)


def class_bytes(host: Host) -> int:
    """Bytes this host has sent through its upload cap (root class counter)."""
    out = subprocess.run(
        ["tc", "-n", host.netns, "-s", "class", "show", "dev", "eth0", "classid", "1:1"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    ).stdout
    match = re.search(r"Sent (\d+) bytes", out)
    return int(match.group(1)) if match else 0
