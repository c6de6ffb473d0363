"""``parse_distribution_path``: any request path and ``?ns=`` gives a DistributionPath or a DistributionError.

Accepted paths never carry an empty, ``.`` or ``..`` segment, name a configured registry and
a valid repository, carry a valid digest where one is needed, and render back to themselves.
"""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import example, given
from hypothesis import strategies as st

from shoal.core.digest import Digest
from shoal.core.reference import validate_repository, validate_tag
from shoal.oci.distribution import DistributionPath, PathKind, parse_distribution_path
from shoal.oci.errors import DistributionError

from .harness import counted, fuzzed

REGISTRIES = frozenset({"registry.test", "docker.io", "localhost:5000", "ghcr.io", "[::1]:5000"})
DIGEST = "sha256:" + "ab" * 32

segments = st.sampled_from(
    [
        *sorted(REGISTRIES),
        "index.docker.io",
        "team",
        "app",
        "library",
        "a.b",
        "a__b",
        "a--b",
        "A",
        "_x",
        "manifests",
        "blobs",
        "tags",
        "list",
        "v1",
        "latest",
        DIGEST,
        "sha256:abc",
        "sha512:" + "0" * 128,
        "",
        ".",
        "..",
        "%2e%2e",
        "%2F",
        "a%00",
        "é",
        "a b",
        "a\n",
        ":",
        "[",
        "]",
        "-",
        "x" * 130,
    ]
) | st.text(max_size=12)
paths = (
    st.builds(
        lambda parts, tail: "/v2/" + "/".join(parts) + tail,
        st.lists(segments, max_size=7),
        st.sampled_from(["", "/", "//"]),
    )
    | st.text(max_size=80)
    | st.text(max_size=80).map("/v2/".__add__)
)
namespaces = (
    st.none()
    | st.sampled_from([*sorted(REGISTRIES), "index.docker.io", "", "evil.example", "a b"])
    | st.text(max_size=20)
)


def render(parsed: DistributionPath) -> str:
    """The path form of an accepted request."""
    if parsed.kind is PathKind.BASE:
        return "/v2/"
    tail = {PathKind.MANIFEST: f"manifests/{parsed.reference}", PathKind.BLOB: f"blobs/{parsed.reference}"}
    return f"/v2/{parsed.registry}/{parsed.repository}/{tail.get(parsed.kind, 'tags/list')}"


@fuzzed
@given(paths, namespaces)
@example("/v2/registry.test/../blobs/" + DIGEST, None)
@example("/v2/registry.test/a/%2e%2e/blobs/" + DIGEST, None)
@example("/v2/a/blobs/" + DIGEST, "registry.test")
@example("/v2/" + "a/" * 200 + "manifests/v1", "registry.test")
@counted("distribution paths")
def test_any_path(raw: str, ns: str | None) -> None:
    try:
        parsed = parse_distribution_path(raw, ns, REGISTRIES)
    except DistributionError:
        return
    if parsed.kind is PathKind.BASE:
        assert raw in ("/v2", "/v2/")
        return
    assert parsed.registry in REGISTRIES
    assert validate_repository(parsed.repository) == parsed.repository
    assert not {"", ".", ".."} & set(parsed.repository.split("/"))
    assert "%" not in parsed.repository
    if parsed.kind is PathKind.BLOB or (parsed.kind is PathKind.MANIFEST and ":" in parsed.reference):
        assert parsed.digest is not None
        assert str(parsed.digest) == parsed.reference
        assert Digest.parse(parsed.reference) == parsed.digest
    elif parsed.kind is PathKind.MANIFEST:
        assert validate_tag(parsed.reference) == parsed.reference
    assert parse_distribution_path(render(parsed), None, REGISTRIES) == parsed


@fuzzed
@given(st.text(max_size=60), namespaces)
@counted("distribution paths (percent-encoded)")
def test_percent_encoded_names_are_refused(name: str, ns: str | None) -> None:
    """Whatever a name decodes to, its encoded form (any %XX) never gets through."""
    raw = f"/v2/registry.test/{quote(name, safe='')}/blobs/{DIGEST}"
    try:
        parsed = parse_distribution_path(raw, ns, REGISTRIES)
    except DistributionError:
        return
    assert "%" not in raw
    assert parsed.repository.split("/")[-1] == name or parsed.repository == f"library/{name}"
