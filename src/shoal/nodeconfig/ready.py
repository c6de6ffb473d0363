"""I/O of ``shoal node-ready``: wait for the local agent, then take the startup taint away."""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from typing import Any

from kubernetes.client.exceptions import ApiException

from shoal.nodeconfig.taint import without_taint

log = logging.getLogger(__name__)


def agent_ready(agent: str, timeout: float = 2.0) -> bool:
    """Whether the agent at ``host:port`` answers ``/healthz`` with 200."""
    try:
        with urllib.request.urlopen(f"http://{agent}/healthz", timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def wait_for_agent(agent: str, *, interval: float = 1.0, deadline: float | None = None) -> bool:
    """Poll the agent until it is ready (True) or ``deadline`` (monotonic) passes (False)."""
    while not agent_ready(agent):
        if deadline is not None and time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def remove_taint(api: Any, node_name: str, key: str, *, attempts: int = 10, retry_delay: float = 0.5) -> bool:
    """Remove taint ``key`` from the node (read, then replace at that resourceVersion).

    Returns True when the taint was removed, False when the node did not carry it. A
    conflict (someone else changed the node in between) is retried with a fresh read.

    Parameters:
        api: a ``kubernetes.client.CoreV1Api``.
    """
    for attempt in range(attempts):
        node = api.api_client.sanitize_for_serialization(api.read_node(node_name))
        updated = without_taint(node, key)
        if updated is None:
            return False
        try:
            api.replace_node(node_name, updated)
            log.info("removed taint %s from node %s", key, node_name)
            return True
        except ApiException as exc:
            if exc.status != 409 or attempt == attempts - 1:
                raise
            time.sleep(retry_delay)
    raise AssertionError("unreachable")
