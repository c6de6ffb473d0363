"""A throwaway CA for tests: the demo's (``shoal.demo.pki``), re-exported."""

from __future__ import annotations

from shoal.demo.pki import TestCA

__all__ = ["TestCA"]
