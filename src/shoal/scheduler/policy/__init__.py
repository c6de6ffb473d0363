"""Parent selection policies, one module each, chosen by name (``--parent-policy``)."""

from __future__ import annotations

from shoal.scheduler.policy import parents, random_parents
from shoal.scheduler.policy.base import Candidate, ParentPolicy

PARENT_POLICIES: dict[str, ParentPolicy] = {
    "least-loaded": parents.choose_parents,
    "random": random_parents.choose_parents,
}

__all__ = ["PARENT_POLICIES", "Candidate", "ParentPolicy"]
