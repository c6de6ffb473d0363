"""Registry authentication: client credentials, ``WWW-Authenticate`` challenges, token cache.

Parsing is pure. The token cache is keyed by (credential fingerprint, realm, service, scope)
so one client's token is never used for another client's request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

_PARAM_RE = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


@dataclass(frozen=True, slots=True)
class Credentials:
    """A username and password from a client's ``Authorization: Basic`` header."""

    username: str
    password: str = field(repr=False)

    @classmethod
    def from_header(cls, header: str | None) -> Credentials | None:
        """Basic credentials, or None for none/anonymous (``Og==``, i.e. ``:``).

        Raises ValueError for a malformed Basic header.
        """
        if not header:
            return None
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise ValueError("malformed Basic authorization header") from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise ValueError("malformed Basic authorization header")
        if not username and not password:
            return None
        return cls(username, password)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    @property
    def fingerprint(self) -> str:
        """A stable, non-reversible cache key for these credentials."""
        return hashlib.sha256(f"{self.username}\0{self.password}".encode()).hexdigest()[:32]


def fingerprint(creds: Credentials | None) -> str:
    return "anonymous" if creds is None else creds.fingerprint


@dataclass(frozen=True, slots=True)
class Challenge:
    """One parsed ``WWW-Authenticate`` challenge."""

    scheme: str
    params: dict[str, str]

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")


def parse_challenge(header: str) -> Challenge | None:
    """Parse ``Bearer realm="…",service="…",scope="…"`` or ``Basic realm="…"``."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params = {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)) for m in _PARAM_RE.finditer(rest)
    }
    params = {k: v.replace('\\"', '"') for k, v in params.items()}
    return Challenge(scheme.lower(), params)


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


@dataclass(frozen=True, slots=True)
class Token:
    value: str
    expires_at: float


class TokenCache:
    """Bearer tokens per (credentials, realm, service, scope), dropped shortly before expiry."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_entries: int = 4096) -> None:
        self._clock = clock
        self._tokens: dict[tuple[str, str, str, str], Token] = {}
        self._max = max_entries

    def get(self, key: tuple[str, str, str, str]) -> str | None:
        token = self._tokens.get(key)
        if token is None:
            return None
        if token.expires_at <= self._clock():
            del self._tokens[key]
            return None
        return token.value

    def put(self, key: tuple[str, str, str, str], value: str, expires_in: float) -> None:
        if len(self._tokens) >= self._max:
            now = self._clock()
            self._tokens = {k: t for k, t in self._tokens.items() if t.expires_at > now}
            if len(self._tokens) >= self._max:
                self._tokens.pop(next(iter(self._tokens)))
        # renew 10% (at least 5 s) early so a token never expires in flight
        margin = max(5.0, expires_in * 0.1)
        self._tokens[key] = Token(value, self._clock() + max(0.0, expires_in - margin))
