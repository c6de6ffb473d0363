"""HTTP over TLS 1.3 on the agent's port: node to node (held content) and ``shoal preheat``.

The agent's port tells these connections from the peer wire by ALPN (``HTTP_ALPN``; the peer
wire offers none): see ``shoal.agent.tls_sniff``. They use the node's certificate, like the
peer wire, but from contexts of their own, so the peer wire's never offer ALPN.

The server asks for a client certificate without requiring one: a node presents its own (and
the routes that serve content to nodes check it), a person's ``shoal preheat`` presents none
and proves itself with the peer token, sent only inside TLS.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from shoal.p2p.tls import TlsDirectory

__all__ = ["HTTP_ALPN", "NodeHttps", "agent_client_context"]

HTTP_ALPN = "http/1.1"


class NodeHttps:
    """Contexts for HTTP over TLS from a node's TLS directory (rebuilt when its files change)."""

    def __init__(self, directory: Path) -> None:
        self._tls = TlsDirectory(directory)

    def server_context(self) -> ssl.SSLContext:
        context = self._tls.server_context()  # this instance's own: the peer wire's is untouched
        context.verify_mode = ssl.CERT_OPTIONAL
        context.set_alpn_protocols([HTTP_ALPN])
        return context

    def client_context(self) -> ssl.SSLContext:
        """Verifies that the peer's certificate names the address dialled (an IP SAN)."""
        context = self._tls.client_context()
        context.check_hostname = True
        context.set_alpn_protocols([HTTP_ALPN])
        return context


def agent_client_context(ca_file: Path) -> ssl.SSLContext:
    """What a person's command verifies agents with: their certificate chains to the cluster's
    CA and names the address dialled (node certificates carry the node's IPs)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols([HTTP_ALPN])
    return context
