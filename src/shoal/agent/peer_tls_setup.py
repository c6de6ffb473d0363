"""Whether the agent's peer wire runs TLS, from its config, said once at start."""

from __future__ import annotations

import logging

from shoal.agent.config import AgentConfig
from shoal.p2p.tls import TlsDirectory, TlsMaterialError

log = logging.getLogger(__name__)


def peer_wire_tls(config: AgentConfig) -> TlsDirectory | None:
    """The TLS material of the peer wire (None: in clear, logged as insecure). A directory
    that is not complete yet is not fatal: it is read again for every handshake (enrollment
    may still be writing it), and until then peers are refused."""
    directory = config.peer_wire_tls
    if directory is None:
        why = "--insecure-peer-wire" if config.insecure_peer_wire else "no --tls-dir"
        log.warning(
            "INSECURE: the peer wire runs in clear (%s): every layer this node sends or receives "
            "crosses the network readable, and peers are told apart only by their address. Labs only.",
            why,
        )
        return None
    tls = TlsDirectory(directory)
    try:
        tls.server_context()
    except TlsMaterialError as exc:
        log.warning("peer wire: %s; peers are refused until it is complete", exc)
    return tls
