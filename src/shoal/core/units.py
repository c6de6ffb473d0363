"""Human units used by flags and Helm values: sizes (``512M``, ``50G``) and durations (``24h``)."""

from __future__ import annotations

import re

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?)[bB]?\s*$")
_SIZE_POWER = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class UnitError(ValueError):
    """A size or duration that cannot be parsed."""


def parse_size(text: str | int) -> int:
    """Bytes from ``"512M"``, ``"50G"``, ``"1.5GiB"`` or a plain integer.

    Sizes use powers of 1024, as the brief's ``ratelimit: 512M`` (MB/s) means.
    """
    if isinstance(text, int):
        if text < 0:
            raise UnitError(f"size must not be negative: {text}")
        return text
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        raise UnitError(f"invalid size {text!r}: want a number with an optional K, M, G or T suffix")
    number, unit, _ = match.groups()
    return int(float(number) * 1024 ** _SIZE_POWER[unit.lower()])


def parse_duration(text: str | float) -> float:
    """Seconds from ``"24h"``, ``"1h30m"``, ``"90s"``, ``"500ms"`` or a plain number of seconds."""
    if isinstance(text, int | float):
        if text < 0:
            raise UnitError(f"duration must not be negative: {text}")
        return float(text)
    stripped = text.strip()
    try:
        value = float(stripped)
    except ValueError:
        pass
    else:
        if value < 0:
            raise UnitError(f"duration must not be negative: {text!r}")
        return value
    parts = _DURATION_RE.findall(stripped)
    if not parts or "".join(n + u for n, u in parts) != stripped:
        raise UnitError(f"invalid duration {text!r}: want e.g. 24h, 90m, 1h30m, 45s")
    return sum(float(n) * _DURATION_SECONDS[u] for n, u in parts)


def format_bytes(count: float) -> str:
    """``1536`` -> ``"1.5 KiB"``; for logs, tables and progress bars."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
