"""Image references (``registry/repository:tag@digest``) and Docker Hub's name normalisation.

The grammar follows the OCI distribution spec and docker/distribution's ``reference``
package: the first path component is a registry host when it contains ``.`` or ``:`` or is
``localhost``; otherwise the image is on Docker Hub, where one-component names live under
``library/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shoal.core.digest import Digest, DigestError

DOCKER_HUB = "docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_HOST_LABEL = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
REGISTRY_RE = re.compile(rf"^(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?$")
MAX_NAME_LENGTH = 255


class ReferenceError(ValueError):
    """An image reference, repository name, tag or registry host that is malformed."""


def is_registry_host(component: str) -> bool:
    """Docker's rule for "is this first path component a registry host?"."""
    return "." in component or ":" in component or component == "localhost" or component != component.lower()


def validate_repository(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or not REPOSITORY_RE.fullmatch(name):
        raise ReferenceError(
            f"invalid repository name {name[:80]!r}: lowercase letters, digits and "
            "separators (. _ __ -) in components joined by '/'"
        )
    return name


def validate_tag(tag: str) -> str:
    if not TAG_RE.fullmatch(tag):
        raise ReferenceError(f"invalid tag {tag[:80]!r}: up to 128 of [A-Za-z0-9_.-], not starting with . or -")
    return tag


def validate_registry(host: str) -> str:
    if not REGISTRY_RE.fullmatch(host):
        raise ReferenceError(f"invalid registry host {host[:80]!r}")
    return host


def canonical_registry(host: str) -> str:
    """``index.docker.io`` and friends are all Docker Hub."""
    return DOCKER_HUB if host in DOCKER_HUB_ALIASES else host


def normalize_repository(registry: str, repository: str) -> str:
    """Docker Hub keeps one-component official images under ``library/``."""
    if canonical_registry(registry) == DOCKER_HUB and "/" not in repository:
        return f"library/{repository}"
    return repository


@dataclass(frozen=True, slots=True)
class ImageReference:
    """A fully qualified image reference: registry, repository and a tag and/or a digest."""

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        """Parse and normalise ``nginx``, ``team/app:v1``, ``reg:5000/a/b@sha256:…``."""
        if not text or len(text) > 4096 or text != text.strip():
            raise ReferenceError(f"invalid image reference {text[:80]!r}")
        rest, digest = text, None
        if "@" in rest:
            rest, _, digest_text = rest.partition("@")
            try:
                digest = Digest.parse(digest_text)
            except DigestError as exc:
                raise ReferenceError(f"invalid image reference {text[:80]!r}: {exc}") from None
        tag = None
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:
            rest, tag = rest[:colon], validate_tag(rest[colon + 1 :])
        first, sep, remainder = rest.partition("/")
        if sep and is_registry_host(first):
            registry, repository = canonical_registry(validate_registry(first)), remainder
        else:
            registry, repository = DOCKER_HUB, rest
        repository = normalize_repository(registry, validate_repository(repository))
        if tag is None and digest is None:
            tag = "latest"
        return cls(registry, repository, tag, digest)

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest when pinned, else the tag."""
        if self.digest is not None:
            return str(self.digest)
        assert self.tag is not None
        return self.tag

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def suffix(self) -> str:
        """``:tag``, ``@digest`` or both, as written after the name."""
        out = f":{self.tag}" if self.tag is not None else ""
        if self.digest is not None:
            out += f"@{self.digest}"
        return out

    def __str__(self) -> str:
        return f"{self.name}{self.suffix()}"
