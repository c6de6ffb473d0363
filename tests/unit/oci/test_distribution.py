"""parse_distribution_path: both addressing forms, and every path trick refused before I/O."""

from __future__ import annotations

import pytest

from shoal.core.digest import Digest
from shoal.oci.distribution import DistributionPath, PathKind, parse_distribution_path
from shoal.oci.errors import DistributionError, ErrorCode

DIGEST = "sha256:" + "c" * 64
REGISTRIES = frozenset({"registry.test", "docker.io", "localhost:5000", "ghcr.io"})


class TestGoodPaths:
    """Path form ``/v2/<registry>/<repo>/...`` and containerd's ``?ns=`` form."""

    @pytest.mark.parametrize(
        ("path", "ns", "expected"),
        [
            ("/v2/", None, DistributionPath(PathKind.BASE)),
            ("/v2", None, DistributionPath(PathKind.BASE)),
            ("/v2/", "registry.test", DistributionPath(PathKind.BASE)),
            (
                "/v2/registry.test/team/app/manifests/v1",
                None,
                DistributionPath(PathKind.MANIFEST, "registry.test", "team/app", "v1"),
            ),
            (
                "/v2/team/app/manifests/v1",
                "registry.test",
                DistributionPath(PathKind.MANIFEST, "registry.test", "team/app", "v1"),
            ),
            (
                f"/v2/registry.test/team/app/blobs/{DIGEST}",
                None,
                DistributionPath(PathKind.BLOB, "registry.test", "team/app", DIGEST, Digest.parse(DIGEST)),
            ),
            (
                f"/v2/team/app/blobs/{DIGEST}",
                "registry.test",
                DistributionPath(PathKind.BLOB, "registry.test", "team/app", DIGEST, Digest.parse(DIGEST)),
            ),
            (
                f"/v2/registry.test/team/app/manifests/{DIGEST}",
                None,
                DistributionPath(PathKind.MANIFEST, "registry.test", "team/app", DIGEST, Digest.parse(DIGEST)),
            ),
            (
                "/v2/registry.test/team/app/tags/list",
                None,
                DistributionPath(PathKind.TAGS, "registry.test", "team/app", ""),
            ),
            # a repository may itself contain "blobs" or "manifests" components
            (
                "/v2/registry.test/manifests/blobs/manifests/latest",
                None,
                DistributionPath(PathKind.MANIFEST, "registry.test", "manifests/blobs", "latest"),
            ),
            # Docker Hub: library/ for one-component names, aliases folded
            (
                "/v2/docker.io/nginx/manifests/latest",
                None,
                DistributionPath(PathKind.MANIFEST, "docker.io", "library/nginx", "latest"),
            ),
            (
                "/v2/nginx/manifests/latest",
                "docker.io",
                DistributionPath(PathKind.MANIFEST, "docker.io", "library/nginx", "latest"),
            ),
            (
                "/v2/library/nginx/manifests/latest",
                "index.docker.io",
                DistributionPath(PathKind.MANIFEST, "docker.io", "library/nginx", "latest"),
            ),
            # a configured registry with a port works in the ?ns= form and the path form
            (
                "/v2/app/manifests/v1",
                "localhost:5000",
                DistributionPath(PathKind.MANIFEST, "localhost:5000", "app", "v1"),
            ),
            (
                "/v2/localhost:5000/app/manifests/v1",
                None,
                DistributionPath(PathKind.MANIFEST, "localhost:5000", "app", "v1"),
            ),
        ],
    )
    def test_parses(self, path: str, ns: str | None, expected: DistributionPath) -> None:
        assert parse_distribution_path(path, ns, REGISTRIES) == expected

    def test_route_names_the_kind(self) -> None:
        assert parse_distribution_path(f"/v2/registry.test/a/blobs/{DIGEST}", None, REGISTRIES).route == "blob"


class TestBadPaths:
    """Each malformed request is refused with the right OCI code (and so the right status)."""

    @pytest.mark.parametrize(
        ("path", "ns", "code"),
        [
            # traversal, raw and percent-encoded
            ("/v2/registry.test/../etc/manifests/v1", None, ErrorCode.NAME_INVALID),
            ("/v2/registry.test/team/../app/manifests/v1", None, ErrorCode.NAME_INVALID),
            ("/v2/registry.test/./app/manifests/v1", None, ErrorCode.NAME_INVALID),
            ("/v2/registry.test/%2e%2e/app/manifests/v1", None, ErrorCode.NAME_INVALID),
            ("/v2/registry.test/%2E%2E/app/manifests/v1", None, ErrorCode.NAME_INVALID),
            ("/v2/registry.test/team%2fapp/manifests/v1", None, ErrorCode.NAME_INVALID),
            ("/v2/registry.test/team/app/blobs/sha256%3a" + "c" * 64, None, ErrorCode.NAME_INVALID),
            ("/v2/registry.test/team/app/blobs/..%2f..%2fetc", None, ErrorCode.NAME_INVALID),
            (f"/v2/registry.test/team/app/blobs/{DIGEST}/..", None, ErrorCode.NAME_INVALID),
            ("/v2/registry.test/team\\app/manifests/v1", None, ErrorCode.NAME_INVALID),
            ("/v2/../../etc/passwd", None, ErrorCode.NAME_INVALID),
            # empty components
            ("/v2/registry.test//app/manifests/v1", None, ErrorCode.NAME_INVALID),
            ("/v2//registry.test/app/manifests/v1", None, ErrorCode.NAME_INVALID),
            ("/v2/registry.test/app/manifests/", None, ErrorCode.NAME_INVALID),
            # bad names
            ("/v2/registry.test/Team/app/manifests/v1", None, ErrorCode.NAME_INVALID),
            ("/v2/registry.test/-app/manifests/v1", None, ErrorCode.NAME_INVALID),
            ("/v2/registry.test/a__-b/manifests/v1", None, ErrorCode.NAME_INVALID),
            ("/v2/app/manifests/v1", "bad_host!", ErrorCode.NAME_INVALID),
            ("/v2/app/manifests/v1", "../etc", ErrorCode.NAME_INVALID),
            # unknown or missing registry
            ("/v2/evil.example/app/manifests/v1", None, ErrorCode.NAME_UNKNOWN),
            ("/v2/app/manifests/v1", "evil.example", ErrorCode.NAME_UNKNOWN),
            ("/v2/team/app/manifests/v1", None, ErrorCode.NAME_UNKNOWN),
            ("/v2/registry.test/manifests/v1", None, ErrorCode.NAME_UNKNOWN),  # registry but no repository
            # bad digests
            ("/v2/registry.test/app/blobs/latest", None, ErrorCode.DIGEST_INVALID),
            ("/v2/registry.test/app/blobs/sha256:abc", None, ErrorCode.DIGEST_INVALID),
            ("/v2/registry.test/app/blobs/md5:" + "c" * 32, None, ErrorCode.DIGEST_INVALID),
            ("/v2/registry.test/app/blobs/sha256:" + "C" * 64, None, ErrorCode.DIGEST_INVALID),
            ("/v2/registry.test/app/manifests/sha256:" + "c" * 63, None, ErrorCode.DIGEST_INVALID),
            # bad tags
            ("/v2/registry.test/app/manifests/-v1", None, ErrorCode.TAG_INVALID),
            ("/v2/registry.test/app/manifests/" + "t" * 129, None, ErrorCode.TAG_INVALID),
            ("/v2/registry.test/app/manifests/.hidden", None, ErrorCode.TAG_INVALID),
            # not the pull API
            ("/v2/registry.test/app/blobs/uploads/", None, ErrorCode.NAME_INVALID),
            ("/v2/registry.test/app/blobs/uploads", None, ErrorCode.DIGEST_INVALID),
            ("/v2/_catalog", None, ErrorCode.NOT_FOUND),
            ("/v2/registry.test/app", None, ErrorCode.NOT_FOUND),
            ("/v2/registry.test/app/referrers/" + DIGEST, None, ErrorCode.NOT_FOUND),
        ],
    )
    def test_refused(self, path: str, ns: str | None, code: ErrorCode) -> None:
        with pytest.raises(DistributionError) as info:
            parse_distribution_path(path, ns, REGISTRIES)
        assert info.value.code is code
        assert info.value.status in (400, 404)

    def test_unknown_registry_lists_the_configured_ones(self) -> None:
        with pytest.raises(DistributionError) as info:
            parse_distribution_path("/v2/app/manifests/v1", "evil.example", REGISTRIES)
        assert info.value.status == 404
        assert info.value.detail == {"configured": sorted(REGISTRIES)}
