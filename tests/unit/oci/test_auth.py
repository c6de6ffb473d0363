"""Client credentials, WWW-Authenticate challenges and the per-credential token cache."""

from __future__ import annotations

import base64

import pytest

from shoal.oci.auth import Challenge, Credentials, TokenCache, fingerprint, parse_challenge, pull_scope


def basic(raw: str) -> str:
    return "Basic " + base64.b64encode(raw.encode()).decode()


class TestCredentialsFromHeader:
    """Basic headers become credentials; none or anonymous is None; garbage is an error."""

    @pytest.mark.parametrize(
        ("header", "expected"),
        [
            (None, None),
            ("", None),
            ("Basic Og==", None),  # ":" is how clients say "anonymous"
            (basic("alice:s3cret"), Credentials("alice", "s3cret")),
            ("basic " + base64.b64encode(b"alice:s3cret").decode(), Credentials("alice", "s3cret")),
            (basic("alice:pa:ss:word"), Credentials("alice", "pa:ss:word")),
            (basic("alice:"), Credentials("alice", "")),
            (basic(":token"), Credentials("", "token")),
            ("Bearer abc.def", None),  # not ours to interpret
        ],
    )
    def test_parses(self, header: str | None, expected: Credentials | None) -> None:
        assert Credentials.from_header(header) == expected

    @pytest.mark.parametrize(
        "header",
        [
            "Basic",
            "Basic !!!notbase64",
            "Basic " + base64.b64encode(b"no-colon").decode(),
            "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
        ],
    )
    def test_malformed(self, header: str) -> None:
        with pytest.raises(ValueError, match="malformed"):
            Credentials.from_header(header)

    def test_round_trip_and_fingerprint(self) -> None:
        creds = Credentials("alice", "s3cret")
        assert Credentials.from_header(creds.basic_header()) == creds
        assert "s3cret" not in repr(creds)
        assert creds.fingerprint == Credentials("alice", "s3cret").fingerprint
        assert creds.fingerprint != Credentials("alice", "other").fingerprint
        assert creds.fingerprint != Credentials("alic", "es3cret").fingerprint
        assert "s3cret" not in creds.fingerprint
        assert fingerprint(None) == "anonymous"


class TestParseChallenge:
    """Bearer and Basic challenges, quoted and bare parameters."""

    @pytest.mark.parametrize(
        ("header", "expected"),
        [
            ("", None),
            ("   ", None),
            (
                'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull"',
                Challenge(
                    "bearer",
                    {
                        "realm": "https://auth.docker.io/token",
                        "service": "registry.docker.io",
                        "scope": "repository:a/b:pull",
                    },
                ),
            ),
            ('Basic realm="Registry Realm"', Challenge("basic", {"realm": "Registry Realm"})),
            ("Basic realm=x", Challenge("basic", {"realm": "x"})),
            ('BEARER Realm="r", Service="s"', Challenge("bearer", {"realm": "r", "service": "s"})),
            ('Bearer realm="a\\"b"', Challenge("bearer", {"realm": 'a"b'})),
            ("Bearer", Challenge("bearer", {})),
        ],
    )
    def test_parses(self, header: str, expected: Challenge | None) -> None:
        assert parse_challenge(header) == expected

    def test_realm_property(self) -> None:
        challenge = parse_challenge('Bearer realm="http://t/token"')
        assert challenge is not None
        assert challenge.realm == "http://t/token"
        assert Challenge("basic", {}).realm == ""

    def test_pull_scope(self) -> None:
        assert pull_scope("team/app") == "repository:team/app:pull"


class TestTokenCache:
    """Tokens are kept per key and dropped before they expire."""

    def test_expiry_with_margin(self) -> None:
        now = [1000.0]
        cache = TokenCache(clock=lambda: now[0])
        key = ("fp", "reg", "scope", "auth")
        cache.put(key, "Bearer t", 300.0)  # renewed 30 s early
        assert cache.get(key) == "Bearer t"
        assert cache.get(("other", "reg", "scope", "auth")) is None
        now[0] += 269.0
        assert cache.get(key) == "Bearer t"
        now[0] += 2.0
        assert cache.get(key) is None

    def test_short_tokens_are_not_cached(self) -> None:
        now = [0.0]
        cache = TokenCache(clock=lambda: now[0])
        cache.put(("a", "b", "c", "d"), "Bearer t", 3.0)  # below the 5 s margin
        assert cache.get(("a", "b", "c", "d")) is None

    def test_bounded(self) -> None:
        now = [0.0]
        cache = TokenCache(clock=lambda: now[0], max_entries=3)
        for i in range(5):
            cache.put((str(i), "r", "s", "auth"), f"t{i}", 600.0)
        present = [i for i in range(5) if cache.get((str(i), "r", "s", "auth")) is not None]
        assert len(present) <= 3
        assert 4 in present
