"""Frozen value types shared by every component: digests, image references, units."""

from shoal.core.digest import Digest, DigestError
from shoal.core.reference import DOCKER_HUB, ImageReference, ReferenceError, normalize_repository
from shoal.core.units import UnitError, format_bytes, parse_duration, parse_size

__all__ = [
    "DOCKER_HUB",
    "Digest",
    "DigestError",
    "ImageReference",
    "ReferenceError",
    "UnitError",
    "format_bytes",
    "normalize_repository",
    "parse_duration",
    "parse_size",
]
