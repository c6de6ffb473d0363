"""The preheat call between ``shoal preheat`` and one agent.

``POST /p2p/v1/preheat`` (peer token required) — body :class:`PreheatRequest`. The agent pulls
the image through its own mirror API, exactly as its node's runtime would (so the blobs come
through the swarm and the registry serves each once however many agents preheat at the same
time), and answers with a stream of JSON lines, one event each:

``{"event": "manifest", "blobs": N, "bytes": B}``
    the image resolved: N distinct blobs of B bytes in all (platform manifests included).
``{"event": "blob", "digest": D, "size": S, "cached": bool}``
    one blob is in the cache (``cached``: it was there before); with ``"error": "..."`` the
    blob could not be pulled.
``{"event": "done", "held": bool, "blobs": N, "bytes": B, "fetched": K, "missing": [D...]}``
    the last line: ``held`` says the cache now holds every blob.
``{"event": "error", "error": "..."}``
    the last line when the image could not be pulled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shoal.p2p.protocol import from_json

PREHEAT_PATH = "/p2p/v1/preheat"


@dataclass(frozen=True, slots=True)
class PreheatRequest:
    image: str
    """a full reference, ``registry/repository:tag`` or ``...@digest``."""
    platforms: list[str] = field(default_factory=list)
    """``os/arch`` entries of an index to warm, ``["all"]`` for every one; empty: the agent's own."""
    authorization: str | None = None
    """the ``Authorization`` header the agent sends its own mirror (registry credentials)."""


def request_from_json(data: Any) -> PreheatRequest:
    value: PreheatRequest = from_json(PreheatRequest, data)
    if not isinstance(value.image, str) or not isinstance(value.platforms, list):
        raise ValueError("PreheatRequest: image must be a string, platforms a list")
    return value
