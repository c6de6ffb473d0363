"""Alias names in both addressing forms resolve to their registry; unknown ones stay unknown."""

from __future__ import annotations

import pytest

from shoal.core.aliases import alias_table
from shoal.oci.distribution import DistributionPath, PathKind, parse_distribution_path
from shoal.oci.errors import DistributionError, ErrorCode

REGISTRIES = frozenset({"harbor.local:5000", "docker.io"})
ALIASES = alias_table(REGISTRIES, 65001)


@pytest.mark.parametrize(
    ("path", "ns", "expected"),
    [
        ("/v2/team/app/manifests/v1", "harbor.local:65001", ("harbor.local:5000", "team/app")),
        ("/v2/team/app/manifests/v1", "harbor.local:5000", ("harbor.local:5000", "team/app")),
        ("/v2/harbor.local-5000/team/app/manifests/v1", None, ("harbor.local:5000", "team/app")),
        ("/v2/nginx/manifests/v1", "docker.io:65001", ("docker.io", "library/nginx")),
        ("/v2/docker.io/library/nginx/manifests/v1", None, ("docker.io", "library/nginx")),
    ],
)
def test_alias_resolves(path: str, ns: str | None, expected: tuple[str, str]) -> None:
    parsed = parse_distribution_path(path, ns, REGISTRIES, ALIASES)
    assert parsed == DistributionPath(PathKind.MANIFEST, *expected, "v1")


def test_alias_unknown_without_table() -> None:
    with pytest.raises(DistributionError) as info:
        parse_distribution_path("/v2/team/app/manifests/v1", "harbor.local:65001", REGISTRIES)
    assert info.value.code is ErrorCode.NAME_UNKNOWN
