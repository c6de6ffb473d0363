"""Registry credentials for an operator's command, found the way a pull finds them.

``--creds user:pass`` wins; otherwise the first docker-style config file that exists
(``--authfile``, ``$REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``,
``$DOCKER_CONFIG/config.json``, ``~/.docker/config.json``) is searched for the registry's
``auths`` entry. Credential helpers (``credHelpers``, ``credsStore``) are not run.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shoal.core.reference import canonical_registry
from shoal.oci.auth import Credentials


class CredentialsError(ValueError):
    """Credentials given but unusable (a malformed ``--creds`` or config file)."""


def parse_creds(text: str) -> Credentials:
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise CredentialsError("--creds: want USER:PASSWORD")
    return Credentials(user, password)


def auth_files(explicit: Path | None, env: Mapping[str, str] = os.environ) -> list[Path]:
    """Config files to search, in order (only the explicit one need exist)."""
    if explicit is not None:
        return [explicit]
    out = []
    if env.get("REGISTRY_AUTH_FILE"):
        out.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        out.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    if env.get("DOCKER_CONFIG"):
        out.append(Path(env["DOCKER_CONFIG"]) / "config.json")
    out.append(Path(env.get("HOME", "~")).expanduser() / ".docker" / "config.json")
    return out


def _host_of(key: str) -> str:
    rest = key.strip()
    for scheme in ("https://", "http://"):
        rest = rest.removeprefix(scheme)
    return canonical_registry(rest.partition("/")[0].lower())


def from_docker_config(config: Any, registry: str) -> Credentials | None:
    """The ``auths`` entry for ``registry`` in a decoded docker config, if any."""
    auths = config.get("auths") if isinstance(config, dict) else None
    if not isinstance(auths, dict):
        return None
    for key, entry in auths.items():
        if _host_of(str(key)) != canonical_registry(registry) or not isinstance(entry, dict):
            continue
        if entry.get("username"):
            return Credentials(str(entry["username"]), str(entry.get("password", "")))
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(str(entry["auth"]), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise CredentialsError(f"auths[{key!r}].auth is not base64 of USER:PASSWORD") from None
            return parse_creds(decoded)
    return None


def find_credentials(registry: str, creds: str | None, authfile: Path | None) -> Credentials | None:
    """Credentials for ``registry``, or None to pull anonymously."""
    if creds:
        return parse_creds(creds)
    for path in auth_files(authfile):
        if not path.is_file():
            if authfile is not None:
                raise CredentialsError(f"--authfile {path}: no such file")
            continue
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CredentialsError(f"{path}: {exc}") from None
        found = from_docker_config(config, registry)
        if found is not None:
            return found
    return None
