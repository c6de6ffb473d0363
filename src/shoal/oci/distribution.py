"""Parse OCI Distribution request paths in both addressing forms Shoal accepts.

1. path form: ``/v2/<registry>/<repository>/manifests/<ref>`` (also what a containers-image
   mirror location ``<agent>/<registry path name>`` sends)
2. containerd's mirror form: ``/v2/<repository>/manifests/<ref>?ns=<registry>``

Either name may be an alias (``shoal.core.aliases``): the webhook's rewrite host
``harbor.local:65001`` arrives as ``?ns=harbor.local:65001``, a CRI-O mirror of
``harbor.local:5000`` as the path name ``harbor.local-5000``; both mean ``harbor.local:5000``.

Parsing is pure and strict: the raw (still percent-encoded) path is checked, so ``%2e%2e``
and friends never reach the file system or an upstream URL.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum

from shoal.core.digest import Digest, DigestError
from shoal.core.reference import (
    ReferenceError,
    canonical_registry,
    is_registry_host,
    normalize_repository,
    validate_registry,
    validate_repository,
    validate_tag,
)
from shoal.oci.errors import DistributionError, ErrorCode

_SAFE_PATH_RE = re.compile(r"^/v2/[A-Za-z0-9._\-/:\[\]]*$")


class PathKind(StrEnum):
    BASE = "base"
    MANIFEST = "manifest"
    BLOB = "blob"
    TAGS = "tags"


@dataclass(frozen=True, slots=True)
class DistributionPath:
    """What a request asks for: which registry, repository and object."""

    kind: PathKind
    registry: str = ""
    repository: str = ""
    reference: str = ""
    digest: Digest | None = None

    @property
    def route(self) -> str:
        return self.kind.value


def parse_distribution_path(
    raw_path: str, ns: str | None, registries: Collection[str], aliases: Mapping[str, str] | None = None
) -> DistributionPath:
    """Split a raw request path into registry, repository and reference.

    ``aliases`` maps alias names (rewrite hosts, path names) to configured registries.

    Raises:
        DistributionError: NAME_INVALID for malformed names or path tricks, NAME_UNKNOWN for a
            registry that is not configured, DIGEST_INVALID / TAG_INVALID for bad references,
            NOT_FOUND for paths that are not part of the pull API.
    """
    if raw_path in ("/v2", "/v2/"):
        return DistributionPath(PathKind.BASE)
    if not _SAFE_PATH_RE.fullmatch(raw_path) or "//" in raw_path:
        raise DistributionError(ErrorCode.NAME_INVALID, f"invalid request path {raw_path[:120]!r}")
    parts = raw_path[len("/v2/") :].split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise DistributionError(ErrorCode.NAME_INVALID, f"invalid request path {raw_path[:120]!r}")
    if len(parts) >= 3 and parts[-2] in ("manifests", "blobs"):
        name_parts, kind_word, reference = parts[:-2], parts[-2], parts[-1]
        kind = PathKind.MANIFEST if kind_word == "manifests" else PathKind.BLOB
    elif len(parts) >= 3 and parts[-2:] == ["tags", "list"]:
        name_parts, kind, reference = parts[:-2], PathKind.TAGS, ""
    else:
        raise DistributionError(ErrorCode.NOT_FOUND, f"not part of the pull API: {raw_path[:120]!r}")
    registry, repository = _split_name(name_parts, ns, registries, aliases or {})
    digest = None
    if kind is PathKind.BLOB or (kind is PathKind.MANIFEST and ":" in reference):
        try:
            digest = Digest.parse(reference)
        except DigestError as exc:
            raise DistributionError(ErrorCode.DIGEST_INVALID, str(exc)) from None
    elif kind is PathKind.MANIFEST:
        try:
            validate_tag(reference)
        except ReferenceError as exc:
            raise DistributionError(ErrorCode.TAG_INVALID, str(exc)) from None
    return DistributionPath(kind, registry, repository, reference, digest)


def _split_name(
    name_parts: list[str], ns: str | None, registries: Collection[str], aliases: Mapping[str, str]
) -> tuple[str, str]:
    if ns is not None:
        try:
            registry = canonical_registry(validate_registry(ns))
        except ReferenceError as exc:
            raise DistributionError(ErrorCode.NAME_INVALID, str(exc)) from None
        registry = aliases.get(registry, registry)
        repo_parts = name_parts
    elif len(name_parts) >= 2 and name_parts[0] in aliases:
        registry, repo_parts = aliases[name_parts[0]], name_parts[1:]
    elif len(name_parts) >= 2 and (name_parts[0] in registries or is_registry_host(name_parts[0])):
        registry, repo_parts = canonical_registry(name_parts[0]), name_parts[1:]
    else:
        raise DistributionError(
            ErrorCode.NAME_UNKNOWN,
            "no registry in request: use /v2/<registry>/<repository>/... or ?ns=<registry>",
        )
    if registry not in registries:
        raise DistributionError(
            ErrorCode.NAME_UNKNOWN,
            f"registry {registry!r} is not configured on this mirror",
            {"configured": sorted(registries)},
        )
    try:
        repository = validate_repository("/".join(repo_parts))
    except ReferenceError as exc:
        raise DistributionError(ErrorCode.NAME_INVALID, str(exc)) from None
    return registry, normalize_repository(registry, repository)
