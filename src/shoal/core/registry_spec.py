"""``--registry NAME[=URL]``: the one syntax the agent and node-config take for a registry."""

from __future__ import annotations

from shoal.core.reference import DOCKER_HUB, ReferenceError, canonical_registry, validate_registry

__all__ = ["DOCKER_HUB_URL", "RegistrySpecError", "parse_registry"]

DOCKER_HUB_URL = "https://registry-1.docker.io"


class RegistrySpecError(ValueError):
    """A ``NAME[=URL]`` that names no valid registry or no usable URL."""


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
    if not url.startswith(("http://", "https://")):
        raise RegistrySpecError(f"registry {name}: URL must start with http:// or https://, got {url!r}")
    return name, url
