"""The optional startup taint: a node is registered with it and loses it once its agent is ready.

With kubelet's ``--register-with-taints=<key>=:NoSchedule`` on a node pool, Pods that do not
tolerate it (every workload) wait until ``shoal node-ready`` has seen the node's runtime
configuration written (node-config ran as the agent's init container) and its agent answer,
so no accelerated Pod lands on a node whose agent is not up yet.
"""

from __future__ import annotations

import copy
from typing import Any

Json = dict[str, Any]
TAINT_SUFFIX = "agent-not-ready"


def without_taint(node: Json, key: str) -> Json | None:
    """A copy of ``node`` without any taint of ``key``, or None when it carries none."""
    taints = (node.get("spec") or {}).get("taints") or []
    kept = [t for t in taints if t.get("key") != key]
    if len(kept) == len(taints):
        return None
    updated = copy.deepcopy(node)
    updated["spec"]["taints"] = kept
    if not kept:
        del updated["spec"]["taints"]
    return updated
