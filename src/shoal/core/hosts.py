"""What a host string names: an IP literal, or this machine's loopback.

Several checks refuse plain HTTP or a certificate name unless the far end is this machine;
they must agree on what "this machine" is.
"""

from __future__ import annotations

import ipaddress

__all__ = ["is_ip_literal", "is_loopback_host"]


def is_ip_literal(text: str) -> bool:
    """True for an IPv4 or IPv6 address written out (no brackets, no port)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``); brackets allowed."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
