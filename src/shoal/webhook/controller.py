"""Creates derived pull secrets for Pods in the API, and keeps them in step with their originals.

The webhook only names a derived pull secret in the Pods it rewrites (and labels them); this
controller is the one writer. One thread lists and watches ``kubernetes.io/dockerconfigjson``
Secrets in all namespaces with the official client, into a cache. A second lists and watches
the labelled Pods: for each original/derived pair a Pod names, the derived Secret is created
from the original as soon as both are known. So a Secret is only ever written for a Pod the
API server admitted, never for a review body someone posted to the webhook. Every derived
Secret that exists follows its original: new credentials are copied, a removed original
removes the derived one (ownerReferences make the garbage collector do the same).
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kubernetes import watch as _watch
from kubernetes.client.exceptions import ApiException

from shoal.webhook.config import WebhookConfig
from shoal.webhook.pullsecrets import (
    DERIVED_FROM_ANNOTATION,
    DERIVED_LABEL,
    DOCKERCONFIGJSON,
    USES_DERIVED_LABEL,
    derive_secret,
    needs_update,
    wanted_derived,
)

log = logging.getLogger(__name__)
Json = dict[str, Any]
FIELD_SELECTOR = f"type={DOCKERCONFIGJSON}"
POD_SELECTOR = f"{USES_DERIVED_LABEL}=true"
_Watch: Any = _watch.Watch  # the client library ships no type hints


def _meta(secret: Json) -> Json:
    meta: Json = secret.get("metadata") or {}
    return meta


class ForeignSecretError(RuntimeError):
    """A Secret with a derived pull secret's name that Shoal did not create."""


def is_derived(secret: Json) -> bool:
    return (_meta(secret).get("labels") or {}).get(DERIVED_LABEL) == "true"


class SecretSync:
    """The derived pull secrets' one writer: a Secret cache, and the Pods that want copies.

    Parameters:
        api: a ``kubernetes.client.CoreV1Api``.
        config: the webhook settings (registries, endpoint, derived names).
        watch_timeout: seconds a watch stays open before it is renewed.
        retry_delay: pause after an API error before listing again.
    """

    def __init__(
        self,
        api: Any,
        config: WebhookConfig,
        *,
        watch_timeout: int = 300,
        retry_delay: float = 2.0,
    ) -> None:
        self._api = api
        self._config = config
        self._watch_timeout = watch_timeout
        self._retry_delay = retry_delay
        self._lock = threading.Lock()
        self._cache: dict[str, dict[str, Json]] = {}
        self._wanted: set[tuple[str, str]] = set()
        """(namespace, original) pairs some Pod in the API names beside their derived copy."""
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._watch: Any = None
        self._pod_watch: Any = None
        self.on_error: Callable[[], None] = lambda: None
        """called from the sync thread for each failed reconcile or watch (the metrics hook)."""

    # -- the cache the webhook reads ------------------------------------------------------

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def secrets_in(self, namespace: str) -> Mapping[str, Json] | None:
        """The namespace's cached pull secrets by name, or None until the first list."""
        if not self._synced.is_set():
            return None
        with self._lock:
            return dict(self._cache.get(namespace, {}))

    def _get(self, namespace: str, name: str) -> Json | None:
        with self._lock:
            return self._cache.get(namespace, {}).get(name)

    def _store(self, event_type: str, secret: Json) -> None:
        meta = _meta(secret)
        namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        with self._lock:
            if event_type == "DELETED":
                self._cache.get(namespace, {}).pop(name, None)
            else:
                self._cache.setdefault(namespace, {})[name] = secret

    # -- writes -----------------------------------------------------------------------------

    def ensure_sync(self, secrets: Sequence[Json]) -> None:
        """Create each derived Secret, or update it when it exists with other content."""
        for desired in secrets:
            meta = _meta(desired)
            namespace, name = meta["namespace"], meta["name"]
            try:
                self._api.create_namespaced_secret(namespace, copy.deepcopy(desired))
                log.info("created derived pull secret %s/%s", namespace, name)
                continue
            except ApiException as exc:
                if exc.status != 409:
                    raise
            existing = self._to_dict(self._api.read_namespaced_secret(name, namespace))
            if not is_derived(existing):
                # someone's own Secret under the derived name: never overwrite it (the Pod is
                # admitted unchanged instead)
                raise ForeignSecretError(f"{namespace}/{name} exists and was not derived by Shoal")
            if needs_update(existing, desired):
                self._replace(existing, desired)

    def _replace(self, existing: Json, desired: Json) -> None:
        body = copy.deepcopy(desired)
        body["metadata"]["resourceVersion"] = _meta(existing).get("resourceVersion")
        meta = _meta(desired)
        self._api.replace_namespaced_secret(meta["name"], meta["namespace"], body)
        log.info("updated derived pull secret %s/%s", meta["namespace"], meta["name"])

    def _delete(self, namespace: str, name: str) -> None:
        try:
            self._api.delete_namespaced_secret(name, namespace)
            log.info("deleted derived pull secret %s/%s", namespace, name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    # -- reconciliation ---------------------------------------------------------------------

    def reconcile(self, event_type: str, secret: Json) -> None:
        """Bring the derived Secret of ``secret`` (or ``secret`` itself, if derived) in line."""
        meta = _meta(secret)
        namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        if is_derived(secret):
            original = (meta.get("annotations") or {}).get(DERIVED_FROM_ANNOTATION)
            if event_type != "DELETED" and original and self._get(namespace, original) is None:
                self._delete(namespace, name)
            return
        derived_name = self._config.derived_secret_name(name)
        existing = self._get(namespace, derived_name)
        if existing is None and event_type != "DELETED" and self._is_wanted(namespace, name):
            self._derive(namespace, name)  # a Pod named the copy before its original existed
            return
        if existing is None or not is_derived(existing):
            return  # no Pod uses a derived copy of this secret (yet)
        desired = None if event_type == "DELETED" else derive_secret(secret, self._config)
        if desired is None:
            self._delete(namespace, derived_name)
        elif needs_update(existing, desired):
            self._replace(existing, desired)

    # -- Pods that name derived copies ------------------------------------------------------

    def _is_wanted(self, namespace: str, original: str) -> bool:
        with self._lock:
            return (namespace, original) in self._wanted

    def _derive(self, namespace: str, original: str) -> None:
        secret = self._get(namespace, original)
        if secret is None:
            log.info("pull secret %s/%s is named by a Pod but does not exist (yet)", namespace, original)
            return
        desired = derive_secret(secret, self._config)
        if desired is None:
            log.info("pull secret %s/%s holds no credentials for an accelerated registry", namespace, original)
            return
        self.ensure_sync([desired])

    def pod_seen(self, pod: Json) -> None:
        """A labelled Pod exists in the API: make the derived Secrets it names."""
        namespace = str(_meta(pod).get("namespace", ""))
        for original, _ in wanted_derived(pod, self._config):
            with self._lock:
                self._wanted.add((namespace, original))
            if self._get(namespace, self._config.derived_secret_name(original)) is None:
                self._derive(namespace, original)

    def _safe_pod_seen(self, pod: Json) -> None:
        try:
            self.pod_seen(pod)
        except (ApiException, ForeignSecretError) as exc:
            meta = _meta(pod)
            log.warning("derived pull secrets for Pod %s/%s: %s", meta.get("namespace"), meta.get("name"), exc)
            self.on_error()

    def _list_and_watch_pods(self) -> None:
        listing = self._api.list_pod_for_all_namespaces(label_selector=POD_SELECTOR)
        for item in listing.items or []:
            self._safe_pod_seen(self._to_dict(item))
        resource_version = listing.metadata.resource_version
        while not self._stopping.is_set():
            self._pod_watch = _Watch()
            for event in self._pod_watch.stream(
                self._api.list_pod_for_all_namespaces,
                label_selector=POD_SELECTOR,
                resource_version=resource_version,
                timeout_seconds=self._watch_timeout,
            ):
                if self._stopping.is_set():
                    break
                pod = self._to_dict(event["object"])
                resource_version = _meta(pod).get("resourceVersion", resource_version)
                if event["type"] in ("ADDED", "MODIFIED"):
                    self._safe_pod_seen(pod)

    def _to_dict(self, obj: Any) -> Json:
        if isinstance(obj, dict):
            return obj
        converted: Json = self._api.api_client.sanitize_for_serialization(obj)
        return converted

    def _list_and_watch(self) -> None:
        listing = self._api.list_secret_for_all_namespaces(field_selector=FIELD_SELECTOR)
        secrets = [self._to_dict(item) for item in listing.items or []]
        with self._lock:
            self._cache = {}
        for secret in secrets:
            self._store("ADDED", secret)
        self._synced.set()
        log.info("secret cache synced: %d pull secrets", len(secrets))
        # Originals first, so derived Secrets left from a previous run can be checked.
        for secret in sorted(secrets, key=is_derived):
            self._safe_reconcile("ADDED", secret)
        resource_version = listing.metadata.resource_version
        while not self._stopping.is_set():
            self._watch = _Watch()
            for event in self._watch.stream(
                self._api.list_secret_for_all_namespaces,
                field_selector=FIELD_SELECTOR,
                resource_version=resource_version,
                timeout_seconds=self._watch_timeout,
            ):
                if self._stopping.is_set():
                    break
                secret = self._to_dict(event["object"])
                resource_version = _meta(secret).get("resourceVersion", resource_version)
                self._store(event["type"], secret)
                self._safe_reconcile(event["type"], secret)

    def _safe_reconcile(self, event_type: str, secret: Json) -> None:
        try:
            self.reconcile(event_type, secret)
        except (ApiException, ForeignSecretError) as exc:
            meta = _meta(secret)
            log.warning("reconcile of %s/%s failed: %s", meta.get("namespace"), meta.get("name"), exc)
            self.on_error()

    def _forever(self, what: str, list_and_watch: Callable[[], None]) -> None:
        while not self._stopping.is_set():
            try:
                list_and_watch()
            except Exception as exc:
                if self._stopping.is_set():
                    break
                log.warning("%s watch failed, relisting: %s", what, exc)
                self.on_error()
                self._stopping.wait(self._retry_delay)

    def run(self) -> None:
        """List, then watch Secrets, forever; relist after errors (410 Gone included)."""
        self._forever("secret", self._list_and_watch)

    def run_pods(self) -> None:
        """Once the Secret cache is synced: list, then watch the labelled Pods, forever."""
        while not self._synced.wait(0.5):
            if self._stopping.is_set():
                return
        self._forever("pod", self._list_and_watch_pods)

    def start(self) -> threading.Thread:
        """Start both watches; returns the Secret one."""
        threading.Thread(target=self.run_pods, name="pod-sync", daemon=True).start()
        thread = threading.Thread(target=self.run, name="secret-sync", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stopping.set()
        for watch in (self._watch, self._pod_watch):
            if watch is not None:
                watch.stop()
