"""What crossed the wire: ``tcpdump`` on an interface, and the TCP streams in its capture.

A window of a layer only shows up in a capture as one piece once each stream is put back
together (on loopback a 64 KiB window spans segments, with headers in between), so
:func:`tcp_streams` reassembles them: IPv4 over Ethernet or Linux cooked captures, by
sequence number, retransmissions dropped.
"""

from __future__ import annotations

import re
import struct
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

_LINKTYPES = {1: 14, 113: 16, 276: 20}
"""pcap link type -> bytes of link header (Ethernet, Linux cooked v1 and v2)"""

Flow = tuple[str, int, str, int]


class Tcpdump:
    """``with Tcpdump("lo", "tcp port 65001", path):`` captures while the block runs."""

    def __init__(self, interface: str, expression: str, path: Path) -> None:
        self.argv = ["tcpdump", "-i", interface, "-s", "0", "-B", "65536", "-U", "-n", "-w", str(path), expression]
        self.path = path
        self.process: subprocess.Popen[bytes] | None = None
        self.dropped = -1
        """packets the kernel dropped before tcpdump read them (known once it stopped)"""

    def __enter__(self) -> Self:
        self.process = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert self.process.stderr is not None
        line = self.process.stderr.readline()  # "listening on lo, ..." once it captures
        if b"listening" not in line:
            self.process.kill()
            self.process.wait()
            raise RuntimeError(f"tcpdump did not start: {line.decode(errors='replace')}")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.process is not None
        time.sleep(0.5)  # the last segments reach the capture
        self.process.terminate()
        self.process.wait(timeout=10)
        assert self.process.stderr is not None
        report = self.process.stderr.read().decode(errors="replace")
        self.process.stderr.close()
        found = re.search(r"(\d+) packets? dropped by kernel", report)
        self.dropped = int(found.group(1)) if found else -1


def tcp_streams(path: Path) -> dict[Flow, bytes]:
    """Each direction of each TCP connection in the capture, its payload in order."""
    data = path.read_bytes()
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    (linktype,) = struct.unpack(endian + "I", data[20:24])
    link = _LINKTYPES[linktype]
    segments: dict[Flow, dict[int, bytes]] = {}
    at = 24
    while at + 16 <= len(data):
        _, _, caplen, _ = struct.unpack(endian + "IIII", data[at : at + 16])
        packet = data[at + 16 : at + 16 + caplen]
        at += 16 + caplen
        ip = packet[link:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        ihl = (ip[0] & 0x0F) * 4
        total = int.from_bytes(ip[2:4])
        tcp = ip[ihl:total]
        offset = (tcp[12] >> 4) * 4
        payload = tcp[offset:]
        if not payload:
            continue
        flow = (
            ".".join(str(b) for b in ip[12:16]),
            int.from_bytes(tcp[0:2]),
            ".".join(str(b) for b in ip[16:20]),
            int.from_bytes(tcp[2:4]),
        )
        segments.setdefault(flow, {}).setdefault(int.from_bytes(tcp[4:8]), payload)
    streams: dict[Flow, bytes] = {}
    for flow, by_seq in segments.items():
        out = bytearray()
        start = min(by_seq)
        for seq in sorted(by_seq):
            payload = by_seq[seq]
            skip = len(out) - ((seq - start) % (1 << 32))
            if skip < len(payload):
                out += payload[max(0, skip) :]
        streams[flow] = bytes(out)
    return streams
