"""Registry credentials for operator commands: --creds, then docker config files."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from shoal.ops.credentials import CredentialsError, auth_files, find_credentials, from_docker_config


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class TestDockerConfig:
    """auths entries match by host, whatever scheme or path the key carries."""

    @pytest.mark.parametrize(
        ("key", "registry"),
        [
            ("https://index.docker.io/v1/", "docker.io"),
            ("reg.example.com", "reg.example.com"),
            ("http://reg.example.com:5000/team", "reg.example.com:5000"),
        ],
    )
    def test_key_forms(self, key: str, registry: str) -> None:
        found = from_docker_config({"auths": {key: {"auth": b64("u:p")}}}, registry)
        assert found is not None
        assert (found.username, found.password) == ("u", "p")

    def test_username_password_entry_and_no_match(self) -> None:
        config = {"auths": {"a.io": {"username": "u", "password": "p"}}}
        found = from_docker_config(config, "a.io")
        assert found is not None
        assert found.password == "p"
        assert from_docker_config(config, "b.io") is None

    def test_bad_auth_is_an_error(self) -> None:
        with pytest.raises(CredentialsError):
            from_docker_config({"auths": {"a.io": {"auth": "%%%"}}}, "a.io")


class TestFind:
    """--creds wins over files; files are searched in order; a named missing file is an error."""

    def test_creds_flag_wins(self, tmp_path: Path) -> None:
        found = find_credentials("a.io", "x:y", tmp_path / "absent.json")
        assert found is not None
        assert found.username == "x"

    def test_authfile(self, tmp_path: Path) -> None:
        path = tmp_path / "auth.json"
        path.write_text(json.dumps({"auths": {"a.io": {"auth": b64("u:p")}}}))
        found = find_credentials("a.io", None, path)
        assert found is not None
        assert found.username == "u"
        assert find_credentials("b.io", None, path) is None
        with pytest.raises(CredentialsError, match="no such file"):
            find_credentials("a.io", None, tmp_path / "absent.json")

    def test_search_order(self) -> None:
        env = {"REGISTRY_AUTH_FILE": "/r.json", "DOCKER_CONFIG": "/d", "HOME": "/h"}
        assert auth_files(None, env) == [Path("/r.json"), Path("/d/config.json"), Path("/h/.docker/config.json")]
