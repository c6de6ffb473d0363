"""Admission decisions for Pods built from kubectl-generated workloads, checked field by field."""

from __future__ import annotations

import base64
import json
import shutil
from typing import Any

import pytest

from shoal.webhook.config import ConfigError, WebhookConfig
from shoal.webhook.mutate import Decision, Scope, decide, review_response, rewrite_image
from shoal.webhook.pullsecrets import USES_DERIVED_LABEL, derive_secret

from .k8s_fixtures import (
    BRIEF_IMAGE,
    BRIEF_REGISTRY,
    COMMANDS,
    DIGEST,
    Json,
    admission_review,
    apply_json_patch,
    load,
    merge_patch,
    pod_from_template,
    run_kubectl,
    with_namespace,
)

MODE = "k8s.aliyun.com/image-accelerate-mode"
P2P_CONFIG = "k8s.aliyun.com/p2p-config"
CONFIG = WebhookConfig.build([BRIEF_REGISTRY, "registry.example.com", "index.docker.io"])
# images of registries with no pull secret in the Pod are rewritten too (public registries)
ANONYMOUS = WebhookConfig.build(
    [BRIEF_REGISTRY, "registry.example.com", "index.docker.io"], rewrite_without_pull_secret=True
)
ALIAS_IMAGE = f"{BRIEF_REGISTRY}:65001/docker-builder/nginx:latest"


def brief_pod(namespace: str = "default", *, label: bool = True) -> Json:
    """The brief's Step 4 Deployment, as the Pod its ReplicaSet creates."""
    template_patch: Json = {
        "spec": {
            "template": {
                "metadata": {"labels": {MODE: "p2p"} if label else {}},
                "spec": {
                    "imagePullSecrets": [{"name": "test-registry"}],
                    "containers": [{"name": "test", "image": BRIEF_IMAGE, "command": ["sleep", "3600"]}],
                },
            }
        }
    }
    return pod_from_template(merge_patch(load("deployment-test"), template_patch), namespace)


def secrets(namespace: str = "default", *names: str) -> dict[str, Json]:
    chosen = names or ("secret-test-registry", "secret-regcred", "secret-dockerhub", "secret-quay")
    out = {}
    for fixture in chosen:
        secret = with_namespace(load(fixture), namespace, uid=f"uid-{fixture}")
        out[secret["metadata"]["name"]] = secret
    return out


def admit(pod: Json, scope: Scope, config: WebhookConfig = CONFIG) -> tuple[Decision, Json]:
    """Run the decision and return the Pod as the API server would store it."""
    namespace = pod["metadata"].get("namespace", "default")
    decision = decide(admission_review(pod, namespace)["request"], scope, config)
    return decision, apply_json_patch(pod, list(decision.patch))


SKIPPED = "k8s.aliyun.com/p2p-skipped"


def left_alone(pod: Json, reason: str) -> Json:
    """``pod`` as stored after a skip: untouched but for the annotation saying why."""
    stored: Json = merge_patch(pod, {"metadata": {"annotations": {SKIPPED: reason}}})
    return stored


def names(pod: Json) -> list[str]:
    """The pull secrets a Pod names, in order."""
    return [str(ref["name"]) for ref in pod["spec"].get("imagePullSecrets") or []]


def dockerconfig(secret: Json) -> Json:
    loaded: Json = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
    return loaded


class TestFixtures:
    """The stored objects are what kubectl really produces."""

    @pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
    @pytest.mark.parametrize("name", sorted(COMMANDS))
    def test_fixture_matches_kubectl(self, name: str) -> None:
        assert run_kubectl(name) == load(name)


class TestBriefExpectedOutput:
    """Step 5 of the brief: annotations, rewritten image and the injected pull credential."""

    def test_label_on_pod_template(self) -> None:
        decision, pod = admit(brief_pod(), Scope.POD)
        assert decision.mutated
        annotations = pod["metadata"]["annotations"]
        assert annotations[MODE] == "p2p"
        p2p_config = json.loads(annotations[P2P_CONFIG])
        assert p2p_config["images"] == [
            {
                "container": "test",
                "original": BRIEF_IMAGE,
                "image": ALIAS_IMAGE,
            }
        ]
        assert p2p_config["version"]
        assert pod["spec"]["containers"][0]["image"] == ALIAS_IMAGE
        assert pod["spec"]["containers"][0]["command"] == ["sleep", "3600"]
        assert pod["spec"]["imagePullSecrets"] == [
            {"name": "test-registry"},
            {"name": "acr-credential-test-registry-p2p"},
        ]

    def test_derived_secret_differs_only_in_registry_key(self) -> None:
        """What the controller creates for the name the patch adds."""
        original = secrets()["test-registry"]
        derived = derive_secret(original, CONFIG)
        assert derived is not None
        assert derived["metadata"]["name"] == "acr-credential-test-registry-p2p"
        assert derived["metadata"]["namespace"] == "default"
        assert derived["type"] == "kubernetes.io/dockerconfigjson"
        assert derived["metadata"]["ownerReferences"] == [
            {"apiVersion": "v1", "kind": "Secret", "name": "test-registry", "uid": "uid-secret-test-registry"}
        ]
        before = dockerconfig(original)["auths"][BRIEF_REGISTRY]
        assert dockerconfig(derived) == {"auths": {f"{BRIEF_REGISTRY}:65001": before}}
        assert before["username"] == "builder"
        assert before["password"] == "s3cret"

    def test_label_on_namespace(self) -> None:
        pod = brief_pod("team-a", label=False)
        assert MODE not in pod["metadata"]["labels"]
        decision, patched = admit(pod, Scope.NAMESPACE)
        assert decision.mutated
        assert patched["spec"]["containers"][0]["image"] == ALIAS_IMAGE
        assert names(patched) == ["test-registry", "acr-credential-test-registry-p2p"]
        assert patched["metadata"]["labels"][USES_DERIVED_LABEL] == "true"

    def test_label_on_both_is_idempotent(self) -> None:
        first, pod = admit(brief_pod(), Scope.POD)
        second, again = admit(pod, Scope.NAMESPACE)
        assert first.mutated
        assert not second.mutated
        assert second.reason == "already injected"
        assert again == pod

    def test_label_on_neither(self) -> None:
        pod = brief_pod(label=False)
        decision, patched = admit(pod, Scope.POD)
        assert not decision.mutated
        assert patched == pod

    def test_pod_label_opts_out_of_labelled_namespace(self) -> None:
        pod = merge_patch(brief_pod(), {"metadata": {"labels": {MODE: "none"}}})
        decision, _ = admit(pod, Scope.NAMESPACE)
        assert not decision.mutated


class TestImages:
    """Which images move behind the endpoint, and how they are spelled."""

    def test_foreign_registry_image_left_alone(self) -> None:
        pod = pod_from_template(
            merge_patch(
                load("deployment-app"),
                {
                    "spec": {
                        "template": {
                            "metadata": {"labels": {MODE: "p2p"}},
                            "spec": {"imagePullSecrets": [{"name": "regcred"}]},
                        }
                    }
                },
            ),
            "default",
        )
        _decision, patched = admit(pod, Scope.POD)
        app, sidecar = patched["spec"]["containers"]
        assert app["image"] == "registry.example.com:65001/team/app:v1"
        assert sidecar["image"] == "quay.io/org/sidecar:2"
        assert len(json.loads(patched["metadata"]["annotations"][P2P_CONFIG])["images"]) == 1
        assert names(patched) == ["regcred", "acr-credential-regcred-p2p"]

    def test_only_foreign_images_is_not_injected(self) -> None:
        config = WebhookConfig.build(["ghcr.io"])
        decision, _ = admit(brief_pod(), Scope.POD, config)
        assert not decision.mutated
        assert decision.reason == "no image from an accelerated registry"

    def test_digest_pinned_image(self) -> None:
        pod = pod_from_template(
            merge_patch(
                load("job-digest"),
                {"spec": {"template": {"metadata": {"labels": {MODE: "p2p"}}}}},
            ),
            "default",
        )
        _, patched = admit(pod, Scope.POD, ANONYMOUS)
        assert patched["spec"]["containers"][0]["image"] == (f"registry.example.com:65001/team/migrate@{DIGEST}")
        assert "imagePullSecrets" not in patched["spec"]

    def test_docker_hub_short_name_and_hub_credentials(self) -> None:
        pod = pod_from_template(
            merge_patch(
                load("deployment-web"),
                {
                    "spec": {
                        "template": {
                            "metadata": {"labels": {MODE: "p2p"}},
                            "spec": {"imagePullSecrets": [{"name": "hub"}]},
                        }
                    }
                },
            ),
            "default",
        )
        _decision, patched = admit(pod, Scope.POD)
        assert patched["spec"]["containers"][0]["image"] == ("docker.io:65001/library/nginx:1.27")
        assert names(patched) == ["hub", "acr-credential-hub-p2p"]
        derived = derive_secret(secrets()["hub"], CONFIG)
        assert derived is not None
        assert list(dockerconfig(derived)["auths"]) == ["docker.io:65001"]

    def test_init_containers(self) -> None:
        pod = merge_patch(
            brief_pod(),
            {
                "spec": {
                    "initContainers": [
                        {"name": "fetch", "image": "busybox:1.36"},
                        {"name": "other", "image": "quay.io/org/tool:1"},
                    ]
                }
            },
        )
        _, patched = admit(pod, Scope.POD, ANONYMOUS)
        init = patched["spec"]["initContainers"]
        assert init[0]["image"] == "docker.io:65001/library/busybox:1.36"
        assert init[1]["image"] == "quay.io/org/tool:1"
        recorded = json.loads(patched["metadata"]["annotations"][P2P_CONFIG])["images"]
        assert [r["container"] for r in recorded] == ["fetch", "test"]

    def test_ephemeral_container_added_to_injected_pod(self) -> None:
        _, pod = admit(brief_pod(), Scope.POD)
        pod["spec"]["ephemeralContainers"] = [
            {"name": "debugger", "image": f"{BRIEF_REGISTRY}/tools/debug:1"},
            {"name": "shell", "image": "quay.io/org/shell:1"},
            {"name": "hub", "image": "busybox"},  # no credentials followed for Docker Hub
        ]
        request = admission_review(pod, "default", operation="UPDATE", sub_resource="ephemeralcontainers")["request"]
        decision = decide(request, Scope.POD, CONFIG)
        patched = apply_json_patch(pod, list(decision.patch))
        ephemeral = patched["spec"]["ephemeralContainers"]
        assert ephemeral[0]["image"] == f"{BRIEF_REGISTRY}:65001/tools/debug:1"
        assert ephemeral[1]["image"] == "quay.io/org/shell:1"
        assert ephemeral[2]["image"] == "busybox"
        anonymous = decide(request, Scope.POD, ANONYMOUS)
        assert len(anonymous.patch) == 2
        assert patched["spec"]["containers"] == pod["spec"]["containers"]
        assert names(patched) == names(pod)

    def test_ephemeral_container_in_pod_not_injected(self) -> None:
        pod = brief_pod(label=False)
        pod["spec"]["ephemeralContainers"] = [{"name": "debugger", "image": "busybox"}]
        request = admission_review(pod, "default", operation="UPDATE", sub_resource="ephemeralcontainers")["request"]
        assert not decide(request, Scope.NAMESPACE, CONFIG).mutated

    @pytest.mark.parametrize(
        ("image", "expected"),
        [
            ("nginx", "docker.io:65001/library/nginx:latest"),
            ("index.docker.io/team/app:v1", "docker.io:65001/team/app:v1"),
            ("registry.example.com/a/b:1@" + DIGEST, "registry.example.com:65001/a/b:1@" + DIGEST),
            ("registry.example.com:5000/a:1", None),
            ("registry.example.com:65001/a:1", None),  # already rewritten
            ("127.0.0.1:65001/registry.example.com/a:1", None),
            ("quay.io/a/b", None),
            ("Not A Reference", None),
        ],
    )
    def test_rewrite_image(self, image: str, expected: str | None) -> None:
        assert rewrite_image(image, CONFIG) == expected


class TestSkipRules:
    """The brief's skip rules: when in doubt, the Pod is left exactly as it was."""

    def test_the_answer_never_depends_on_the_namespaces_secrets(self) -> None:
        """Review finding (issue 16, defect 5): a missing pull secret used to leave the Pod
        alone, so whether a patch came back told anyone who could post to the webhook whether
        a Secret of that name existed in any namespace. The answer is from the Pod alone; the
        controller makes the derived copy only where the original exists."""
        decision, patched = admit(brief_pod("team-b"), Scope.POD)
        assert decision.mutated
        assert names(patched) == ["test-registry", "acr-credential-test-registry-p2p"]

    def test_already_injected(self) -> None:
        pod = merge_patch(brief_pod(), {"metadata": {"annotations": {P2P_CONFIG: "{}"}}})
        decision, _ = admit(pod, Scope.POD)
        assert not decision.mutated

    def test_secret_for_other_registry_is_not_derived(self) -> None:
        pod = merge_patch(brief_pod(), {"spec": {"imagePullSecrets": None}})
        pod["spec"]["imagePullSecrets"] = [{"name": "test-registry"}, {"name": "quay"}]
        _, patched = admit(pod, Scope.POD)
        derived = ["acr-credential-test-registry-p2p", "acr-credential-quay-p2p"]
        assert names(patched) == ["test-registry", "quay", *derived]
        assert derive_secret(secrets()["quay"], CONFIG) is None  # so the controller makes no copy of it
        assert derive_secret(secrets()["test-registry"], CONFIG) is not None

    def test_node_credentials_pod_is_left_alone(self) -> None:
        pod = brief_pod()
        del pod["spec"]["imagePullSecrets"]  # credentials from the node's credential provider
        decision, patched = admit(pod, Scope.POD)
        assert not decision.mutated
        assert "no pull secret" in decision.reason
        assert patched == left_alone(pod, decision.reason)
        assert admit(pod, Scope.POD, ANONYMOUS)[0].mutated  # the operator's opt-in

    @pytest.mark.parametrize(
        "spec_patch",
        [
            {"nodeSelector": {"kubernetes.io/os": "windows"}},
            {"tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists"}]},
        ],
        ids=["windows", "virtual-node"],
    )
    def test_pods_for_nodes_without_node_config_are_left_alone(self, spec_patch: Json) -> None:
        pod = merge_patch(brief_pod(), {"spec": spec_patch})
        decision, patched = admit(pod, Scope.POD)
        assert not decision.mutated
        assert "no node-config there" in decision.reason
        assert patched == left_alone(pod, decision.reason)
        linux = merge_patch(brief_pod(), {"spec": {"nodeSelector": {"kubernetes.io/os": "linux"}}})
        assert admit(linux, Scope.POD)[0].mutated

    def test_every_accelerated_image_of_a_pod_with_pull_secrets_moves(self) -> None:
        """Which registries a pull secret covers is not known from the Pod alone: all move, and
        an image whose credentials come from the node then pulls with none (documented)."""
        pod = merge_patch(
            brief_pod(),
            {
                "spec": {
                    "initContainers": [
                        {"name": "hub", "image": "busybox:1.36"},
                    ]
                }
            },
        )
        _, patched = admit(pod, Scope.POD)
        assert patched["spec"]["initContainers"][0]["image"] == "docker.io:65001/library/busybox:1.36"
        assert patched["spec"]["containers"][0]["image"] == ALIAS_IMAGE

    def test_not_a_create(self) -> None:
        request = admission_review(brief_pod(), "default", operation="UPDATE")["request"]
        assert not decide(request, Scope.POD, CONFIG).mutated


class TestRegistryWithPort:
    """``harbor.local:5000`` becomes ``harbor.local:65001``, a valid reference and secret key."""

    def test_rewrite_and_secret(self) -> None:
        config = WebhookConfig.build(["harbor.local:5000"])
        secret = with_namespace(load("secret-regcred"), "default", uid="u1")
        auth = {"username": "team", "password": "pw", "auth": "dGVhbTpwdw=="}
        secret["data"][".dockerconfigjson"] = base64.b64encode(
            json.dumps({"auths": {"harbor.local:5000": auth}}).encode()
        ).decode()
        pod = merge_patch(brief_pod(), {"spec": {"imagePullSecrets": [{"name": "regcred"}]}})
        pod["spec"]["containers"][0]["image"] = "harbor.local:5000/team/app:v1"
        _, patched = admit(pod, Scope.POD, config)
        assert patched["spec"]["containers"][0]["image"] == "harbor.local:65001/team/app:v1"
        assert names(patched) == ["regcred", "acr-credential-regcred-p2p"]
        derived = derive_secret(secret, config)
        assert derived is not None
        assert dockerconfig(derived) == {"auths": {"harbor.local:65001": auth}}


class TestConfig:
    """Prefixes, names and bad settings."""

    def test_custom_label_prefix_and_names(self) -> None:
        config = WebhookConfig.build(
            [BRIEF_REGISTRY],
            p2p_port=7000,
            alias_domain="p2p.internal",
            label_prefix="shoal.io",
            secret_prefix="",
            secret_suffix="-shoal",
        )
        pod = brief_pod(label=False)
        pod["metadata"]["labels"]["shoal.io/image-accelerate-mode"] = "p2p"
        pod["metadata"]["annotations"] = {"team": "x"}
        _decision, patched = admit(pod, Scope.POD, config)
        annotations = patched["metadata"]["annotations"]
        assert annotations["team"] == "x"
        assert annotations["shoal.io/image-accelerate-mode"] == "p2p"
        assert "shoal.io/p2p-config" in annotations
        assert patched["spec"]["containers"][0]["image"] == (
            f"{BRIEF_REGISTRY}.p2p.internal:7000/docker-builder/nginx:latest"
        )
        assert patched["spec"]["imagePullSecrets"][-1] == {"name": "test-registry-shoal"}
        assert MODE not in annotations
        assert patched["metadata"]["labels"][USES_DERIVED_LABEL] == "true"

    @pytest.mark.parametrize(
        ("registries", "kwargs"),
        [
            ([], {}),
            (["not a host"], {}),
            (["a.io"], {"p2p_port": 0}),
            (["a.io"], {"alias_domain": "bad domain"}),
            (["a.io:65001"], {}),  # alias would be the registry itself: needs an alias domain
            (["a.io:5000", "a.io:5001"], {}),  # one alias host for two registries
            (["a.io"], {"label_prefix": "a/b"}),
        ],
    )
    def test_bad_settings(self, registries: list[str], kwargs: dict[str, Any]) -> None:
        with pytest.raises(ConfigError):
            WebhookConfig.build(registries, **kwargs)


class TestReviewResponse:
    """The AdmissionReview answer carries the uid and a base64 JSONPatch."""

    def test_response(self) -> None:
        review = admission_review(brief_pod(), "default", uid="abc")
        decision = decide(review["request"], Scope.POD, CONFIG)
        response = review_response(review, decision)
        assert response["apiVersion"] == "admission.k8s.io/v1"
        assert response["response"]["uid"] == "abc"
        assert response["response"]["allowed"] is True
        assert response["response"]["patchType"] == "JSONPatch"
        assert json.loads(base64.b64decode(response["response"]["patch"])) == list(decision.patch)

    def test_unchanged_response_has_no_patch(self) -> None:
        review = admission_review(brief_pod(label=False), "default")
        response = review_response(review, decide(review["request"], Scope.POD, CONFIG))
        assert response["response"] == {"uid": review["request"]["uid"], "allowed": True}
