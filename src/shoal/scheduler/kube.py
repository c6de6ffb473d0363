"""The three Kubernetes API calls enrollment makes, behind a Protocol tests fake.

``TokenReview`` (is this projected ServiceAccount token genuine, for our audience, and which
Pod is it bound to), read that Pod, read its Node. The scheduler's ServiceAccount needs
``create tokenreviews`` and ``get pods, nodes`` (the chart's RBAC), nothing else. Calls go
through the official client in a worker thread: enrollment happens once per node per
certificate lifetime, far from the scheduler's hot path.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from shoal.p2p.tls import is_zone
from shoal.scheduler.issuance import POD_NAME_EXTRA, POD_UID_EXTRA, NodeFacts, PodFacts, TokenFacts

__all__ = ["ClusterFacts", "KubernetesFacts", "KubernetesUnavailable", "node_facts", "pod_facts", "token_facts"]

ZONE_LABEL = "topology.kubernetes.io/zone"
"""the well-known Node label a node certificate's zone comes from"""


class KubernetesUnavailable(ValueError):
    """No Kubernetes API configuration: not in a Pod, and no (usable) kubeconfig."""


class ClusterFacts(Protocol):
    async def review_token(self, token: str, audience: str) -> TokenFacts: ...

    async def pod(self, namespace: str, name: str) -> PodFacts | None: ...

    async def node(self, name: str) -> NodeFacts | None: ...


def _first(extra: dict[str, Any] | None, key: str) -> str:
    values = (extra or {}).get(key) or []
    return str(values[0]) if values else ""


def token_facts(review: dict[str, Any]) -> TokenFacts:
    """A ``TokenReview`` object (as JSON) as facts."""
    status = review.get("status") or {}
    user = status.get("user") or {}
    extra = user.get("extra") or {}
    return TokenFacts(
        authenticated=bool(status.get("authenticated")),
        error=str(status.get("error") or ""),
        username=str(user.get("username") or ""),
        audiences=tuple(str(a) for a in status.get("audiences") or ()),
        pod_name=_first(extra, POD_NAME_EXTRA),
        pod_uid=_first(extra, POD_UID_EXTRA),
    )


def pod_facts(pod: dict[str, Any]) -> PodFacts:
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    return PodFacts(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        service_account=str(spec.get("serviceAccountName") or ""),
        node_name=str(spec.get("nodeName") or ""),
        terminating=bool(meta.get("deletionTimestamp")),
    )


def node_facts(node: dict[str, Any]) -> NodeFacts:
    addresses = (node.get("status") or {}).get("addresses") or []
    ips = tuple(str(a["address"]) for a in addresses if a.get("type") == "InternalIP" and a.get("address"))
    meta = node.get("metadata") or {}
    zone = str((meta.get("labels") or {}).get(ZONE_LABEL) or "")
    return NodeFacts(name=str(meta.get("name") or ""), internal_ips=ips, zone=zone if is_zone(zone) else "")


class KubernetesFacts:
    """:class:`ClusterFacts` from the API server, through the official client.

    Parameters:
        kubeconfig: a kubeconfig file; None: the in-cluster configuration of the Pod.
    """

    def __init__(self, kubeconfig: str | None = None) -> None:
        from kubernetes import client
        from kubernetes import config as _config

        config: Any = _config  # the client library ships no type hints
        configuration = client.Configuration()
        try:
            if kubeconfig:
                config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
            else:
                config.load_incluster_config(client_configuration=configuration)
        except (config.ConfigException, OSError, ValueError) as exc:
            where = f"kubeconfig {kubeconfig}" if kubeconfig else "the in-cluster configuration (not in a Pod?)"
            raise KubernetesUnavailable(
                f"--agent-service-account needs the Kubernetes API: {where}: {str(exc).rstrip('.')}"
            ) from None
        api = client.ApiClient(configuration)
        self._api: Any = api
        self._auth: Any = client.AuthenticationV1Api(api)
        self._core: Any = client.CoreV1Api(api)

    def _json(self, call: Any, *args: Any) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            found = call(*args)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        data = self._api.sanitize_for_serialization(found)
        return data if isinstance(data, dict) else None

    async def review_token(self, token: str, audience: str) -> TokenFacts:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [audience]},
        }
        review = await asyncio.to_thread(self._json, self._auth.create_token_review, body)
        return token_facts(review or {})

    async def pod(self, namespace: str, name: str) -> PodFacts | None:
        found = await asyncio.to_thread(self._json, self._core.read_namespaced_pod, name, namespace)
        return pod_facts(found) if found is not None else None

    async def node(self, name: str) -> NodeFacts | None:
        found = await asyncio.to_thread(self._json, self._core.read_node, name)
        return node_facts(found) if found is not None else None
