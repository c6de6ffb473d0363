"""The fuzz tests run under the ``ci`` Hypothesis profile unless SHOAL_FUZZ_PROFILE names another."""

from __future__ import annotations

import os

from hypothesis import settings

from . import harness as _harness  # registers the profiles

settings.load_profile(os.environ.get("SHOAL_FUZZ_PROFILE", _harness.DEFAULT_PROFILE))
