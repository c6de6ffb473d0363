"""Process plumbing for the test drivers; it lives in :mod:`shoal.demo.procs` (``shoal demo`` runs
processes too, and ``shoal.testing`` is not shipped in the runtime package)."""

from shoal.demo.procs import (
    ManagedProcess,
    ProgramMissingError,
    StartupError,
    free_port,
    require,
    tail,
    wait_until,
)

__all__ = [
    "ManagedProcess",
    "ProgramMissingError",
    "StartupError",
    "free_port",
    "require",
    "tail",
    "wait_until",
]
