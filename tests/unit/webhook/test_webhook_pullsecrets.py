"""Derivation of P2P pull secrets from docker config JSON."""

from __future__ import annotations

import base64
import json

import pytest

from shoal.webhook.config import WebhookConfig
from shoal.webhook.pullsecrets import (
    derive_dockerconfig,
    derive_secret,
    derived_names,
    needs_update,
    read_dockerconfig,
    split_auth_key,
    wanted_derived,
)

CONFIG = WebhookConfig.build(["registry.example.com", "docker.io"])


def secret(auths: object, *, type_: str = "kubernetes.io/dockerconfigjson") -> dict[str, object]:
    raw = base64.b64encode(json.dumps({"auths": auths}).encode()).decode()
    return {
        "type": type_,
        "metadata": {"name": "orig", "namespace": "ns", "uid": "u1"},
        "data": {".dockerconfigjson": raw},
    }


class TestSplitAuthKey:
    """Docker config keys come with schemes, paths and Docker Hub's legacy spelling."""

    @pytest.mark.parametrize(
        ("key", "expected"),
        [
            ("https://index.docker.io/v1/", ("docker.io", "")),
            ("registry.example.com", ("registry.example.com", "")),
            ("http://registry.example.com/team/", ("registry.example.com", "team")),
            ("Registry.Example.com:5000", ("registry.example.com:5000", "")),
        ],
    )
    def test_split(self, key: str, expected: tuple[str, str]) -> None:
        assert split_auth_key(key) == expected


class TestDerive:
    """Only accelerated registries are re-keyed; credentials are copied untouched."""

    def test_path_scoped_key_keeps_its_path(self) -> None:
        entry = {"auth": "dTpw", "email": "a@b"}
        derived = derive_dockerconfig({"auths": {"registry.example.com/team": entry, "quay.io": {"auth": "x"}}}, CONFIG)
        assert derived == {"auths": {"registry.example.com:65001/team": entry}}

    def test_nothing_to_derive(self) -> None:
        assert derive_secret(secret({"quay.io": {"auth": "x"}}), CONFIG) is None

    @pytest.mark.parametrize(
        "bad",
        [
            {"type": "Opaque", "data": {}},
            {"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "!!"}},
            {"type": "kubernetes.io/dockerconfigjson", "data": None},
            {
                "type": "kubernetes.io/dockerconfigjson",
                "data": {".dockerconfigjson": base64.b64encode(b"[1]").decode()},
            },
        ],
    )
    def test_unreadable_secrets_are_ignored(self, bad: dict[str, object]) -> None:
        assert read_dockerconfig(bad) is None
        assert derive_secret({**bad, "metadata": {"name": "x"}}, CONFIG) is None

    def test_needs_update_tracks_credentials(self) -> None:
        first = derive_secret(secret({"registry.example.com": {"auth": "old"}}), CONFIG)
        second = derive_secret(secret({"registry.example.com": {"auth": "new"}}), CONFIG)
        assert first is not None
        assert second is not None
        assert needs_update(first, second)
        assert not needs_update(first, first)
        assert first["metadata"]["labels"]["shoal.io/derived-pull-secret"] == "true"
        assert first["metadata"]["annotations"]["shoal.io/derived-from"] == "orig"


class TestDerivedNames:
    """The names the webhook adds, and the pairs the controller reads back from a stored Pod."""

    def test_one_copy_per_original_never_a_copy_of_a_copy(self) -> None:
        config = WebhookConfig.build(["registry.example.com"])
        names = ["a", "acr-credential-a-p2p", "b", "b"]
        assert derived_names(names, config) == ["acr-credential-b-p2p"]

    def test_pairs_of_a_stored_pod(self) -> None:
        config = WebhookConfig.build(["registry.example.com"])
        pod = {"spec": {"imagePullSecrets": [{"name": "b"}, {"name": "acr-credential-b-p2p"}, {"name": "c"}]}}
        assert wanted_derived(pod, config) == [("b", "acr-credential-b-p2p")]
        assert wanted_derived({"spec": "x"}, config) == []
