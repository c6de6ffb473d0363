"""The Secret controller, through the real kubernetes client, against a local fake API server."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from urllib.parse import unquote

import pytest
from kubernetes import client

from shoal.ops.helm import build_values, manifest_documents, render
from shoal.testing.fake_apiserver import FakeApiServer
from shoal.webhook.config import WebhookConfig
from shoal.webhook.controller import ForeignSecretError, SecretSync
from shoal.webhook.mutate import Scope, decide
from shoal.webhook.pullsecrets import derive_secret

from .k8s_fixtures import BRIEF_REGISTRY, Json, admission_review, apply_json_patch, load, with_namespace
from .test_webhook_mutate import brief_pod

CONFIG = WebhookConfig.build([BRIEF_REGISTRY])
DERIVED = "acr-credential-test-registry-p2p"


def creds(secret: Json | None) -> Json:
    assert secret is not None
    loaded: Json = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
    return loaded


def original(password: str = "s3cret") -> Json:
    secret = with_namespace(load("secret-test-registry"), "default")
    auth = {"username": "builder", "password": password}
    config = {"auths": {BRIEF_REGISTRY: auth}}
    secret["data"][".dockerconfigjson"] = base64.b64encode(json.dumps(config).encode()).decode()
    return secret


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    yield server
    server.close()


@pytest.fixture
def core(apiserver: FakeApiServer) -> Iterator[client.CoreV1Api]:
    configuration = client.Configuration()
    configuration.host = apiserver.url
    with client.ApiClient(configuration) as api_client:
        yield client.CoreV1Api(api_client)


def start(core: client.CoreV1Api, apiserver: FakeApiServer) -> Iterator[SecretSync]:
    sync = SecretSync(core, CONFIG, watch_timeout=1, retry_delay=0.05)
    thread = sync.start()
    assert sync.wait_synced(10)
    yield sync
    sync.stop()
    apiserver.end_watches()
    thread.join(10)
    assert not thread.is_alive()


@pytest.fixture
def sync(apiserver: FakeApiServer, core: client.CoreV1Api) -> Iterator[SecretSync]:
    apiserver.put(original())
    apiserver.put(with_namespace(load("secret-quay"), "default"))
    yield from start(core, apiserver)


def derived_in_default(pod: Json, sync: SecretSync) -> list[Json]:
    """The derived Secrets the pull secrets ``pod`` names imply, from the controller's cache."""
    cached = sync.secrets_in("default") or {}
    implied = (derive_secret(cached[name], CONFIG) for name in pod_pull_secrets(pod))
    return [secret for secret in implied if secret is not None]


def pod_pull_secrets(pod: Json) -> list[str]:
    return [str(ref["name"]) for ref in pod["spec"].get("imagePullSecrets") or []]


class TestSecretSync:
    """List+watch feeds the cache; derived secrets are created, followed and removed."""

    def test_cache_after_list(self, sync: SecretSync, apiserver: FakeApiServer) -> None:
        cached = sync.secrets_in("default")
        assert cached is not None
        assert set(cached) == {"test-registry", "quay"}
        assert sync.secrets_in("elsewhere") == {}
        assert ("GET", "/api/v1/secrets?fieldSelector=type%3Dkubernetes.io/dockerconfigjson") in (apiserver.requests)

    def test_watch_updates_cache(self, sync: SecretSync, apiserver: FakeApiServer) -> None:
        apiserver.put(with_namespace(load("secret-regcred"), "team-a"))
        assert apiserver.wait_for(lambda _: "regcred" in (sync.secrets_in("team-a") or {}))

    def test_ensure_creates_then_follows_and_deletes(self, sync: SecretSync, apiserver: FakeApiServer) -> None:
        secrets = derived_in_default(brief_pod(), sync)
        sync.ensure_sync(secrets)
        derived = apiserver.get("default", DERIVED)
        assert creds(derived) == {"auths": {f"{BRIEF_REGISTRY}:65001": {"username": "builder", "password": "s3cret"}}}
        assert derived is not None
        owner = derived["metadata"]["ownerReferences"][0]
        assert owner["name"] == "test-registry"
        assert owner["uid"] == apiserver.get("default", "test-registry")["metadata"]["uid"]  # type: ignore[index]
        assert apiserver.wait_for(lambda _: DERIVED in (sync.secrets_in("default") or {}))

        apiserver.put(original(password="rotated"))
        assert apiserver.wait_for(
            lambda s: (
                (s.get("default", DERIVED) or {}).get("data") is not None
                and "rotated" in json.dumps(creds(s.get("default", DERIVED)))
            )
        )

        apiserver.remove("default", "test-registry")
        assert apiserver.wait_for(lambda s: s.get("default", DERIVED) is None)

    def test_ensure_is_idempotent_and_repairs(self, sync: SecretSync, apiserver: FakeApiServer) -> None:
        secrets = derived_in_default(brief_pod(), sync)
        sync.ensure_sync(secrets)
        version = apiserver.get("default", DERIVED)["metadata"]["resourceVersion"]  # type: ignore[index]
        sync.ensure_sync(secrets)
        assert apiserver.get("default", DERIVED)["metadata"]["resourceVersion"] == version  # type: ignore[index]
        tampered = apiserver.get("default", DERIVED)
        assert tampered is not None
        tampered["data"][".dockerconfigjson"] = base64.b64encode(b'{"auths":{}}').decode()
        apiserver.put(tampered)
        apiserver.wait_for(lambda _: True, timeout=0.2)
        sync.ensure_sync(secrets)
        assert "s3cret" in json.dumps(creds(apiserver.get("default", DERIVED)))

    def test_a_users_own_secret_under_the_derived_name_is_never_overwritten(
        self, sync: SecretSync, apiserver: FakeApiServer
    ) -> None:
        """Review finding: without the admission policy (Kubernetes < 1.30) ensure replaced any
        Secret that had the derived name."""
        mine = original(password="users-own")
        mine["metadata"]["name"] = DERIVED
        apiserver.put(mine)
        with pytest.raises(ForeignSecretError):
            sync.ensure_sync(derived_in_default(brief_pod(), sync))
        assert "users-own" in json.dumps(creds(apiserver.get("default", DERIVED)))

    def test_unrelated_secret_changes_touch_nothing(self, sync: SecretSync, apiserver: FakeApiServer) -> None:
        apiserver.put(original(password="changed"))
        assert apiserver.wait_for(
            lambda _: "changed" in json.dumps(creds((sync.secrets_in("default") or {}).get("test-registry")))
        )
        assert apiserver.get("default", DERIVED) is None
        assert not [r for r in apiserver.requests if r[0] in ("POST", "PUT", "DELETE")]


class TestStartup:
    """A derived secret left behind by an original deleted while the webhook was down."""

    def test_orphan_is_removed_on_first_list(self, apiserver: FakeApiServer, core: client.CoreV1Api) -> None:
        stored = apiserver.put(original())
        derived = derive_secret(stored, CONFIG)
        assert derived is not None
        apiserver.put(derived)
        apiserver.remove("default", "test-registry")
        assert apiserver.get("default", DERIVED) is not None
        for running in start(core, apiserver):
            assert apiserver.wait_for(lambda s: s.get("default", DERIVED) is None)
            assert "test-registry" not in (running.secrets_in("default") or {})

    def test_relists_after_expired_watch(self, apiserver: FakeApiServer, core: client.CoreV1Api) -> None:
        apiserver.put(original())
        for sync in start(core, apiserver):
            lists_before = sum(1 for m, p in apiserver.requests if "watch" not in p)
            with apiserver.changed:
                apiserver.events.clear()  # history compacted: the next watch gets 410 Gone
                apiserver.version += 10
            apiserver.end_watches()
            apiserver.put(with_namespace(load("secret-regcred"), "team-b"))
            assert apiserver.wait_for(lambda _, s=sync: "regcred" in (s.secrets_in("team-b") or {}))
            assert sum(1 for m, p in apiserver.requests if "watch" not in p) > lists_before


def resource(path: str) -> str:
    """The resource of one request of the fake's log: ``secrets`` or ``pods``."""
    parts = path.split("?")[0].split("/")
    return parts[3] if parts[3] != "namespaces" else parts[5]


def rbac_verb(method: str, path: str) -> str:
    """The RBAC verb the API server checks for one request of the fake's log."""
    if method == "GET":
        if "watch=" in path:
            return "watch"
        return "get" if _ITEM_PATH.match(path.split("?")[0]) else "list"
    return {"POST": "create", "PUT": "update", "DELETE": "delete"}[method]


_ITEM_PATH = re.compile(r"^/api/v1/namespaces/[^/]+/secrets/[^/]+$")


class TestRBAC:
    """The chart grants exactly the verbs the controller's whole life cycle uses."""

    def test_granted_verbs_are_the_used_ones(self, sync: SecretSync, apiserver: FakeApiServer) -> None:
        secrets = derived_in_default(brief_pod(), sync)
        sync.ensure_sync(secrets)  # create
        sync.ensure_sync(secrets)  # 409, read back, unchanged
        apiserver.put(original(password="rotated"))  # followed: update
        assert apiserver.wait_for(lambda s: "rotated" in json.dumps(creds(s.get("default", DERIVED))))
        apiserver.remove("default", "test-registry")  # followed: delete
        assert apiserver.wait_for(lambda s: s.get("default", DERIVED) is None)
        assert apiserver.wait_for(lambda s: any(p.startswith("/api/v1/pods?") and "watch" in p for _, p in s.requests))
        used = {(resource(path), rbac_verb(method, path)) for method, path in apiserver.requests}

        rendered = manifest_documents(render(build_values((), ("registries=" + BRIEF_REGISTRY,))))
        (role,) = [d for d in rendered if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("-webhook")]
        granted = {(res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]}
        on_secrets = {("secrets", verb) for verb in ("get", "list", "watch", "create", "update", "delete")}
        assert used == granted == on_secrets | {("pods", "list"), ("pods", "watch")}


def admitted(pod: Json, name: str = "app-1") -> Json:
    """``pod`` as the API server stores it after the webhook's patch."""
    namespace = pod["metadata"]["namespace"]
    request = admission_review(pod, namespace)["request"]
    stored: Json = apply_json_patch(pod, list(decide(request, Scope.POD, CONFIG).patch))
    stored["metadata"]["name"] = name
    return stored


def writes(apiserver: FakeApiServer) -> list[tuple[str, str]]:
    return [r for r in apiserver.requests if r[0] in ("POST", "PUT", "DELETE")]


class TestPodsInTheApi:
    """Derived Secrets are made for Pods the API server stored, never for a review body."""

    def test_a_stored_pod_gets_its_derived_secret(self, sync: SecretSync, apiserver: FakeApiServer) -> None:
        pod = admitted(brief_pod())
        assert apiserver.get("default", DERIVED) is None
        apiserver.put_pod(pod)
        assert apiserver.wait_for(lambda s: s.get("default", DERIVED) is not None)
        assert creds(apiserver.get("default", DERIVED)) == {
            "auths": {f"{BRIEF_REGISTRY}:65001": {"username": "builder", "password": "s3cret"}}
        }
        watches = [p for _, p in apiserver.requests if p.startswith("/api/v1/pods?")]
        assert watches
        assert all("labelSelector=shoal.io/uses-derived-pull-secret=true" in unquote(p) for p in watches)

    def test_the_original_may_come_after_the_pod(self, sync: SecretSync, apiserver: FakeApiServer) -> None:
        apiserver.put_pod(admitted(brief_pod("team-c")))
        apiserver.wait_for(lambda _: False, timeout=0.3)
        assert apiserver.get("team-c", DERIVED) is None
        late = original()
        late["metadata"]["namespace"] = "team-c"
        apiserver.put(late)
        assert apiserver.wait_for(lambda s: s.get("team-c", DERIVED) is not None)

    def test_no_copy_without_credentials_for_an_accelerated_registry(
        self, sync: SecretSync, apiserver: FakeApiServer
    ) -> None:
        pod = brief_pod()
        pod["spec"]["imagePullSecrets"] = [{"name": "quay"}]
        apiserver.put_pod(admitted(pod))
        apiserver.put_pod(admitted(brief_pod(), name="marker"))  # processed after the first
        assert apiserver.wait_for(lambda s: s.get("default", DERIVED) is not None)
        assert apiserver.get("default", "acr-credential-quay-p2p") is None

    def test_unlabelled_pods_are_not_seen(self, sync: SecretSync, apiserver: FakeApiServer) -> None:
        pod = admitted(brief_pod())
        del pod["metadata"]["labels"]["shoal.io/uses-derived-pull-secret"]
        apiserver.put_pod(pod)
        apiserver.wait_for(lambda _: False, timeout=0.3)
        assert writes(apiserver) == []

    def test_a_review_posted_to_the_webhook_writes_nothing(self, sync: SecretSync, apiserver: FakeApiServer) -> None:
        """Review finding (issue 16, defect 5): a forged AdmissionReview naming namespace
        team-b made the webhook create a derived Secret there."""
        forged = original()
        forged["metadata"]["namespace"] = "team-b"
        apiserver.put(forged)
        assert apiserver.wait_for(lambda _: "test-registry" in (sync.secrets_in("team-b") or {}))
        request = admission_review(brief_pod("team-b"), "team-b")["request"]
        assert decide(request, Scope.POD, CONFIG).mutated
        apiserver.wait_for(lambda _: False, timeout=0.3)
        assert writes(apiserver) == []

    def test_a_users_own_secret_under_the_derived_name_stops_nothing(
        self, sync: SecretSync, apiserver: FakeApiServer
    ) -> None:
        """Found while moving the writes to the controller: the refusal to overwrite a user's
        Secret escaped the Secret watch, which then relisted for ever."""
        mine = {"type": "Opaque", "metadata": {"name": DERIVED, "namespace": "team-d"}, "data": {"k": "dg=="}}
        apiserver.put(mine)  # not a pull secret: not in the controller's cache
        errors: list[int] = []
        sync.on_error = lambda: errors.append(1)
        apiserver.put_pod(admitted(brief_pod("team-d")))
        apiserver.wait_for(lambda _: False, timeout=0.3)
        lists = sum(1 for _, p in apiserver.requests if p.startswith("/api/v1/secrets?") and "watch" not in p)
        late = original()
        late["metadata"]["namespace"] = "team-d"
        apiserver.put(late)
        assert apiserver.wait_for(lambda _: errors == [1])
        apiserver.put(with_namespace(load("secret-regcred"), "team-e"))
        assert apiserver.wait_for(lambda _: "regcred" in (sync.secrets_in("team-e") or {}))
        assert sum(1 for _, p in apiserver.requests if p.startswith("/api/v1/secrets?") and "watch" not in p) == lists
        kept = apiserver.get("team-d", DERIVED)
        assert kept is not None
        assert (kept["type"], kept["data"]) == ("Opaque", mine["data"])
