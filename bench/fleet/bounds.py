"""The Kumar-Ross lower bound on the time to get one file to every node of a fleet.

Kumar & Ross (2006), "Peer-assisted file distribution: the minimum distribution time":
a server with upload ``u_s`` and N peers with uploads ``u_i`` and downloads ``d_i`` cannot
deliver F bytes to every peer faster than

    max(F / u_s, F / min(d_i), N * F / (u_s + sum(u_i)))

The first term: the server has to send every bit at least once. The second: the slowest
downloader has to receive every bit. The third: N copies have to be uploaded by someone.
Rates here are in bits per second and sizes in bytes, as ``tc`` and ``docker`` speak them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["LowerBound", "kumar_ross", "kumar_ross_uniform"]


@dataclass(frozen=True, slots=True)
class LowerBound:
    """The bound and its three terms, in seconds."""

    origin_term: float
    """F / u_origin: the origin sends every byte at least once."""
    download_term: float
    """F / min(d_node): the slowest downloader receives every byte."""
    upload_term: float
    """N * F / (u_origin + sum u_node): every copy is uploaded by someone."""

    @property
    def seconds(self) -> float:
        return max(self.origin_term, self.download_term, self.upload_term)

    @property
    def binding(self) -> str:
        """Which term is the bound: ``origin``, ``download`` or ``upload``."""
        terms = {
            "origin": self.origin_term,
            "download": self.download_term,
            "upload": self.upload_term,
        }
        return max(terms, key=lambda k: terms[k])


def kumar_ross(
    size_bytes: int,
    origin_upload_bps: float,
    node_uploads_bps: Sequence[float],
    node_downloads_bps: Sequence[float],
) -> LowerBound:
    """The bound for a heterogeneous fleet (one upload and one download rate per node).

    Parameters:
        size_bytes: F, the bytes every node needs.
        origin_upload_bps: the origin's upload cap, bits per second.
        node_uploads_bps: each node's upload cap, bits per second.
        node_downloads_bps: each node's download cap, bits per second (same length).
    """
    if size_bytes < 0:
        raise ValueError("size must not be negative")
    if len(node_uploads_bps) != len(node_downloads_bps):
        raise ValueError("one upload and one download rate per node")
    if not node_downloads_bps:
        raise ValueError("a fleet needs at least one node")
    if origin_upload_bps <= 0 or min(node_downloads_bps) <= 0 or min(node_uploads_bps) < 0:
        raise ValueError("rates must be positive (node uploads may be zero)")
    bits = size_bytes * 8.0
    n = len(node_downloads_bps)
    return LowerBound(
        origin_term=bits / origin_upload_bps,
        download_term=bits / min(node_downloads_bps),
        upload_term=n * bits / (origin_upload_bps + sum(node_uploads_bps)),
    )


def kumar_ross_uniform(size_bytes: int, nodes: int, origin_upload_bps: float, node_bps: float) -> LowerBound:
    """The bound when every node uploads and downloads at ``node_bps``."""
    return kumar_ross(size_bytes, origin_upload_bps, [node_bps] * nodes, [node_bps] * nodes)
