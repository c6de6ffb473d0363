"""Keeps derived pull secrets in sync with their originals, from a list+watch of Secrets.

One thread lists and watches ``kubernetes.io/dockerconfigjson`` Secrets in all namespaces
with the official client. It feeds the cache the webhook decides from, and for every derived
Secret that exists it follows the original: new credentials are copied, a removed original
removes the derived one (ownerReferences make the garbage collector do the same).
"""

from __future__ import annotations

import asyncio
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
    derive_secret,
    needs_update,
)

log = logging.getLogger(__name__)
Json = dict[str, Any]
FIELD_SELECTOR = f"type={DOCKERCONFIGJSON}"
_Watch: Any = _watch.Watch  # the client library ships no type hints


def _meta(secret: Json) -> Json:
    meta: Json = secret.get("metadata") or {}
    return meta


class ForeignSecretError(RuntimeError):
    """A Secret with a derived pull secret's name that Shoal did not create."""


def is_derived(secret: Json) -> bool:
    return (_meta(secret).get("labels") or {}).get(DERIVED_LABEL) == "true"


class SecretSync:
    """The Secret cache and writer behind the webhook (implements ``server.SecretSource``).

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
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._watch: Any = None
        self.on_error: Callable[[], None] = lambda: None
        """called from the sync thread for each failed reconcile or watch (the metrics hook)."""

    # -- the cache the webhook reads ------------------------------------------------------

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def secrets_in(self, namespace: str) -> Mapping[str, Json] | None:
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

    async def ensure(self, secrets: Sequence[Json]) -> None:
        await asyncio.to_thread(self.ensure_sync, secrets)

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
        if existing is None or not is_derived(existing):
            return  # no Pod uses a derived copy of this secret (yet)
        desired = None if event_type == "DELETED" else derive_secret(secret, self._config)
        if desired is None:
            self._delete(namespace, derived_name)
        elif needs_update(existing, desired):
            self._replace(existing, desired)

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
        except ApiException as exc:
            meta = _meta(secret)
            log.warning("reconcile of %s/%s failed: %s", meta.get("namespace"), meta.get("name"), exc)
            self.on_error()

    def run(self) -> None:
        """List, then watch, forever; relist after errors (410 Gone included)."""
        while not self._stopping.is_set():
            try:
                self._list_and_watch()
            except Exception as exc:
                if self._stopping.is_set():
                    break
                log.warning("secret watch failed, relisting: %r", exc)
                self.on_error()
                self._stopping.wait(self._retry_delay)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="secret-sync", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stopping.set()
        if self._watch is not None:
            self._watch.stop()
