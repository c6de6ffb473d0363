"""The handshake of wire protocol v2: the HMAC proof each side sends, and the server's nonce log.

Handshake: the client sends HELLO with a fresh 32-byte nonce; the server answers WELCOME with
its own nonce and ``proof = HMAC-SHA256(secret, "shoal-p2p-v2" 0 "server" 0 nc ns id_c id_s)``
(ids encoded as in :mod:`.codec`); the client checks it and sends AUTH with the same MAC labelled
``"client"``; the server checks that. Both nonces are in both MACs, so a recorded answer is
worthless on a new connection; the labels stop one side's proof being reflected as the other's;
proofs are compared in constant time. A server may share a :class:`NonceLog` between its
connections to refuse a client nonce it has seen recently. The handshake authenticates; it
does not encrypt (every piece is verified against its hash anyway; use mTLS for secrecy).
"""

from __future__ import annotations

import hashlib
import hmac
import threading

from .codec import _short

_MAC_CONTEXT = b"shoal-p2p-v2\0"


def _proof(secret: bytes, label: bytes, nc: bytes, ns: bytes, client_id: str, server_id: str) -> bytes:
    message = _MAC_CONTEXT + label + b"\0" + nc + ns + _short(client_id, "peer id") + _short(server_id, "peer id")
    return hmac.new(secret, message, hashlib.sha256).digest()


class NonceLog:
    """The last ``capacity`` client nonces a server accepted, to refuse a replayed HELLO."""

    def __init__(self, capacity: int = 65536) -> None:
        self.capacity = capacity
        self._seen: dict[bytes, None] = {}
        self._lock = threading.Lock()
        """servers run handshakes in several threads at once"""

    def admit(self, nonce: bytes) -> bool:
        """False if ``nonce`` was seen before; else remember it (forgetting the oldest)."""
        with self._lock:
            if nonce in self._seen:
                return False
            self._seen[nonce] = None
            if len(self._seen) > self.capacity:
                del self._seen[next(iter(self._seen))]
            return True
