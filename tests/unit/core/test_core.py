"""Core value types: digests, image references and human units, as table tests."""

from __future__ import annotations

import pytest

from shoal.core.digest import Digest, DigestError
from shoal.core.reference import ImageReference, ReferenceError
from shoal.core.units import UnitError, format_bytes, parse_duration, parse_size

HEX64 = "a" * 64
HEX128 = "b" * 128


class TestDigestParse:
    """Only well-formed sha256/sha512 digests are accepted: they become file names."""

    @pytest.mark.parametrize(
        ("text", "algorithm", "hexpart"),
        [
            (f"sha256:{HEX64}", "sha256", HEX64),
            (f"sha512:{HEX128}", "sha512", HEX128),
            ("sha256:" + "0123456789abcdef" * 4, "sha256", "0123456789abcdef" * 4),
        ],
    )
    def test_good(self, text: str, algorithm: str, hexpart: str) -> None:
        digest = Digest.parse(text)
        assert (digest.algorithm, digest.hex) == (algorithm, hexpart)
        assert str(digest) == text

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "sha256",
            "sha256:",
            f"sha256:{HEX64[:-1]}",  # too short
            f"sha256:{HEX64}a",  # too long
            f"sha256:{HEX64.upper()}",  # upper-case hex
            f"sha512:{HEX64}",  # wrong length for the algorithm
            f"md5:{HEX64}",  # unsupported algorithm
            f"SHA256:{HEX64}",
            f"sha256:{HEX64[:-1]}g",  # not hex
            f"sha256:../{HEX64[3:]}",
            f"sha256:{HEX64}/..",
            f" sha256:{HEX64}",
            f"sha256:{HEX64}\n",
            HEX64,
        ],
    )
    def test_bad(self, text: str) -> None:
        with pytest.raises(DigestError):
            Digest.parse(text)

    def test_of_and_hasher_agree(self) -> None:
        digest = Digest.of(b"hello")
        assert str(digest) == "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        hasher = digest.hasher()
        hasher.update(b"hello")
        assert hasher.hexdigest() == digest.hex
        assert Digest.of(b"hello", "sha512").hasher().name == "sha512"


class TestImageReferenceParse:
    """References normalise like docker's: Docker Hub, library/, ports, tags and digests."""

    @pytest.mark.parametrize(
        ("text", "registry", "repository", "tag", "digest"),
        [
            ("nginx", "docker.io", "library/nginx", "latest", None),
            ("nginx:1.27", "docker.io", "library/nginx", "1.27", None),
            ("team/app", "docker.io", "team/app", "latest", None),
            ("docker.io/nginx", "docker.io", "library/nginx", "latest", None),
            ("index.docker.io/library/nginx:1", "docker.io", "library/nginx", "1", None),
            ("registry-1.docker.io/team/app:v1", "docker.io", "team/app", "v1", None),
            ("localhost/app", "localhost", "app", "latest", None),
            ("localhost:5000/app:v2", "localhost:5000", "app", "v2", None),
            ("127.0.0.1:5000/team/app:v1", "127.0.0.1:5000", "team/app", "v1", None),
            ("registry.test/a/b/c:x", "registry.test", "a/b/c", "x", None),
            ("registry.test:443/a", "registry.test:443", "a", "latest", None),
            ("[::1]:5000/app", "[::1]:5000", "app", "latest", None),
            (f"registry.test/app@sha256:{HEX64}", "registry.test", "app", None, f"sha256:{HEX64}"),
            (f"reg:5000/a/b:v1@sha256:{HEX64}", "reg:5000", "a/b", "v1", f"sha256:{HEX64}"),
            (f"nginx@sha256:{HEX64}", "docker.io", "library/nginx", None, f"sha256:{HEX64}"),
            ("Reg/app", "Reg", "app", "latest", None),  # docker: an upper-case first component is a host
            ("ghcr.io/org/my-app_x.y:v1.2.3-rc_1", "ghcr.io", "org/my-app_x.y", "v1.2.3-rc_1", None),
        ],
    )
    def test_normalisation(
        self, text: str, registry: str, repository: str, tag: str | None, digest: str | None
    ) -> None:
        ref = ImageReference.parse(text)
        assert ref.registry == registry
        assert ref.repository == repository
        assert ref.tag == tag
        assert (str(ref.digest) if ref.digest else None) == digest

    @pytest.mark.parametrize(
        "text",
        [
            "",
            " nginx",
            "nginx ",
            "registry.test/Team/app",  # upper-case repository
            "registry.test/app:",  # empty tag
            "registry.test/app:-v1",  # tag starting with '-'
            "registry.test/app:" + "x" * 129,  # tag too long
            "registry.test/app@sha256:abc",  # bad digest
            "registry.test/app@",  # empty digest
            "registry.test//app",  # empty component
            "registry.test/app/",  # trailing slash
            "registry.test/../app",
            "registry.test/a..b",
            "registry.test/-app",
            "reg_istry.test/app",  # '_' in a host
            "registry.test:99999999/app",  # port too long
            "a/" * 200 + "b",  # over 255 characters
        ],
    )
    def test_bad(self, text: str) -> None:
        with pytest.raises(ReferenceError):
            ImageReference.parse(text)

    def test_rendering(self) -> None:
        ref = ImageReference.parse(f"registry.test/team/app:v1@sha256:{HEX64}")
        assert ref.name == "registry.test/team/app"
        assert ref.reference == f"sha256:{HEX64}"  # the digest wins for fetching
        assert ref.suffix() == f":v1@sha256:{HEX64}"
        assert str(ref) == f"registry.test/team/app:v1@sha256:{HEX64}"
        assert ImageReference.parse("nginx").reference == "latest"
        assert str(ImageReference.parse("nginx")) == "docker.io/library/nginx:latest"


class TestUnits:
    """Sizes use powers of 1024; durations accept 24h, 1h30m, 500ms and plain seconds."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("0", 0),
            ("512", 512),
            (4096, 4096),
            ("1K", 1024),
            ("1k", 1024),
            ("512M", 512 << 20),
            ("512MB", 512 << 20),
            ("1.5GiB", 3 << 29),
            ("50G", 50 << 30),
            ("2T", 2 << 40),
            (" 10 Mi ", 10 << 20),
        ],
    )
    def test_parse_size(self, text: str | int, expected: int) -> None:
        assert parse_size(text) == expected

    @pytest.mark.parametrize("text", ["", "M", "-1", -1, "1P", "1.2.3G", "ten", "1 G B"])
    def test_parse_size_bad(self, text: str | int) -> None:
        with pytest.raises(UnitError):
            parse_size(text)

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("24h", 86400.0),
            ("90m", 5400.0),
            ("1h30m", 5400.0),
            ("45s", 45.0),
            ("500ms", 0.5),
            ("2d", 172800.0),
            ("1.5h", 5400.0),
            ("30", 30.0),
            (" 12 ", 12.0),
            (60, 60.0),
            (0.25, 0.25),
        ],
    )
    def test_parse_duration(self, text: str | float, expected: float) -> None:
        assert parse_duration(text) == pytest.approx(expected)

    @pytest.mark.parametrize("text", ["", "h", "1x", "1h 30m", "-5", -5, "1h-30m", "soon", "1hh"])
    def test_parse_duration_bad(self, text: str | float) -> None:
        with pytest.raises(UnitError):
            parse_duration(text)

    @pytest.mark.parametrize(
        ("count", "text"),
        [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 << 20, "5.0 MiB"), (3 << 40, "3.0 TiB")],
    )
    def test_format_bytes(self, count: int, text: str) -> None:
        assert format_bytes(count) == text
