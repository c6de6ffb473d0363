"""What is wrong with a set of chart values, in words a person can act on.

Two sources: the brief's own parameter names, which mean something for one cloud's registry
and nothing here (each is refused with what to set instead), and the Helm engine's schema and
``fail`` messages, which are reworded to name the value as it is written on ``--set``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

BRIEF_PARAMETERS: dict[tuple[str, ...], str] = {
    ("region",): (
        "region picks an Alibaba Cloud region; Shoal needs none: name the registry itself, "
        "e.g. --set registries=registry.example.com"
    ),
    ("acrInstances",): (
        "acrInstances names ACR instance IDs; Shoal accelerates registries by host: "
        "--set registries=registry.example.com[,harbor.example.com]"
    ),
    ("pullImageInternet",): (
        "pullImageInternet picks ACR's public endpoint; Shoal pulls from each registry's url: "
        "--set registries[0].host=<host>,registries[0].url=https://<public endpoint>"
    ),
    ("p2p", "plusMode", "ossInternetAccelerate"): (
        "p2p.plusMode.ossInternetAccelerate switches OSS's accelerated endpoint, which Shoal has "
        "no equivalent of (agents follow a registry's redirect to object storage as given): "
        "point registries[N].url at a nearer endpoint or pull-through mirror instead"
    ),
}

_SCHEMA_LINE = re.compile(r"^- at '(?P<path>[^']*)': (?P<message>.*)$")
_UNKNOWN = re.compile(r"^additional propert(?:y|ies) (?P<names>.*) not allowed$")
_FAIL = re.compile(r"execution error at \([^)]*\): (?P<message>.*)$", re.DOTALL)


def _lookup(values: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = values
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
    return True


def brief_parameter_problems(values: Mapping[str, Any]) -> list[str]:
    """One line per brief parameter found in ``values``: why it is refused, what to set."""
    return [message for path, message in BRIEF_PARAMETERS.items() if _lookup(values, path)]


def _dotted(pointer: str) -> str:
    return ".".join(part for part in pointer.split("/") if part)


def _schema_problem(pointer: str, message: str) -> str:
    unknown = _UNKNOWN.match(message)
    if unknown:
        names = [n.strip().strip("'") for n in unknown.group("names").split(",")]
        where = _dotted(pointer)
        keys = ", ".join(f"{where}.{n}" if where else n for n in names)
        return f"unknown value {keys}: not a setting of the chart (see its values.yaml)"
    return f"invalid value {_dotted(pointer) or '(top level)'}: {message}"


def helm_problems(message: str) -> list[str]:
    """The person's mistakes in a Helm values or render error, one line each; [] if none."""
    problems = [_schema_problem(m["path"], m["message"]) for m in map(_SCHEMA_LINE.match, message.splitlines()) if m]
    if problems:
        return problems
    failed = _FAIL.search(message)
    return [failed.group("message").strip()] if failed else []
