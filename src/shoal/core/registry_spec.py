"""``--registry NAME[=URL]``: the one syntax the agent and node-config take for a registry.

The URL ends up in files other programs parse (containerd's ``hosts.toml``, CRI-O's
``registries.conf.d``), so only a plain ``http(s)://host[:port][/path]`` is accepted: no
spaces, quotes, control characters, query or fragment.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from shoal.core.reference import DOCKER_HUB, ReferenceError, canonical_registry, validate_registry

__all__ = ["DOCKER_HUB_URL", "RegistrySpecError", "parse_registry", "validate_url"]

DOCKER_HUB_URL = "https://registry-1.docker.io"
_PATH = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@%/-]*")
"""RFC 3986 path characters (``pchar`` and ``/``)"""


class RegistrySpecError(ValueError):
    """A ``NAME[=URL]`` that names no valid registry or no usable URL."""


def validate_url(name: str, url: str) -> str:
    """``url`` if it is a plain registry base URL, else :class:`RegistrySpecError` saying why."""
    want = "want http(s)://HOST[:PORT][/PATH]"
    if any(not c.isprintable() or c.isspace() or c in '"\\<>^`{|}' for c in url):
        raise RegistrySpecError(f"registry {name}: URL {url!r} has a space, quote or control character; {want}")
    if not url.startswith(("http://", "https://")):
        raise RegistrySpecError(f"registry {name}: URL must start with http:// or https://, got {url!r}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
        validate_registry(parts.netloc.rpartition("@")[2])
    except (ValueError, ReferenceError):
        raise RegistrySpecError(f"registry {name}: URL {url!r} has no valid host[:port]; {want}") from None
    if parts.query or parts.fragment or "?" in url or "#" in url or not _PATH.fullmatch(parts.path):
        raise RegistrySpecError(f"registry {name}: URL {url!r} has a query, fragment or bad path; {want}")
    return url


def parse_registry(spec: str) -> tuple[str, str]:
    """``NAME`` or ``NAME=URL`` -> (canonical name, base URL)."""
    name, sep, url = spec.partition("=")
    name = name.strip()
    try:
        name = canonical_registry(validate_registry(name))
    except ReferenceError as exc:
        raise RegistrySpecError(f"registry: {exc}") from None
    if not sep or not url.strip():
        url = DOCKER_HUB_URL if name == DOCKER_HUB else f"https://{name}"
    url = url.strip().rstrip("/")
    return name, validate_url(name, url)
