"""Is the node's container runtime configured to pull through the agent? (a ``shoal status`` check)

Reads what ``shoal node-config`` writes, by path only: containerd's
``<certs.d>/<host>/hosts.toml`` (for the registry itself, the mirror mode, or its
``<host>:<port>`` alias, the rewrite mode) and CRI-O's ``registries.conf.d/*.conf`` drop-ins.
A file "points at the agent" when it names a mirror on the agent's port on loopback (or on
the agent's own address). Pure apart from reading those files.

Paths are as the node sees them (what containerd's ``config_path`` names, what a person
looks for); ``host_root`` is where the node's root is mounted when the check runs in a
container (the agent Pod mounts the runtime's directories read-only under ``/host``).
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.core.aliases import AliasError, alias_host

CONTAINERD_CERTS_DIR = Path("/etc/containerd/certs.d")
REGISTRIES_CONF_DIR = Path("/etc/containers/registries.conf.d")
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """What was found for one registry."""

    registry: str
    points_at_agent: list[str] = field(default_factory=list)
    """files that send this registry's pulls to the agent."""
    elsewhere: list[str] = field(default_factory=list)
    """files for this registry that do not name the agent (why: after the colon)."""

    @property
    def ok(self) -> bool:
        return bool(self.points_at_agent)


def _hostport(url: str) -> str:
    rest = url.strip()
    for scheme in ("http://", "https://"):
        rest = rest.removeprefix(scheme)
    return rest.partition("/")[0]


def is_agent(location: str, port: int, addresses: Sequence[str]) -> bool:
    """A mirror URL or location on the agent: loopback or one of its addresses, on its port."""
    hostport = _hostport(location)
    host, _, got = hostport.rpartition(":")
    return got == str(port) and (host in LOOPBACK or hostport in addresses)


def on_host(host_root: Path | None, node_path: Path) -> Path:
    """Where the node's ``node_path`` is from here: under ``host_root`` in a container."""
    return host_root / node_path.relative_to("/") if host_root is not None else node_path


def _read_toml(path: Path) -> dict[str, Any] | str:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return f"unreadable: {exc}"


def _hosts(registry: str, port: int, domain: str = "") -> tuple[str, ...]:
    """The registry's own host (mirror mode) and its rewrite alias host (``shoal.core.aliases``)."""
    try:
        return (registry, alias_host(registry, port, domain))
    except AliasError:
        return (registry,)


def check_containerd(
    certs_dir: Path,
    registry: str,
    port: int,
    addresses: Sequence[str],
    domain: str = "",
    host_root: Path | None = None,
) -> RuntimeConfig:
    found = RuntimeConfig(registry)
    for host in _hosts(registry, port, domain):
        path = certs_dir / host / "hosts.toml"
        if not on_host(host_root, path).is_file():
            continue
        data = _read_toml(on_host(host_root, path))
        if isinstance(data, str):
            found.elsewhere.append(f"{path}: {data}")
        elif any(is_agent(h, port, addresses) for h in (data.get("host") or {})):
            found.points_at_agent.append(str(path))
        else:
            found.elsewhere.append(f"{path}: no [host] on port {port}")
    return found


def check_crio(
    conf_dir: Path,
    registry: str,
    port: int,
    addresses: Sequence[str],
    into: RuntimeConfig,
    domain: str = "",
    host_root: Path | None = None,
) -> None:
    seen = on_host(host_root, conf_dir)
    if not seen.is_dir():
        return
    for found in sorted(seen.glob("*.conf")):
        path = conf_dir / found.name
        data = _read_toml(found)
        if isinstance(data, str):
            into.elsewhere.append(f"{path}: {data}")
            continue
        for entry in data.get("registry") or []:
            if not {entry.get("prefix"), entry.get("location")} & {*_hosts(registry, port, domain)}:
                continue
            mirrors = [m.get("location", "") for m in entry.get("mirror") or []]
            if any(is_agent(m, port, addresses) for m in mirrors):
                into.points_at_agent.append(str(path))
            else:
                into.elsewhere.append(f"{path}: no mirror on port {port}")


def check_runtime_config(
    registries: Sequence[str],
    port: int,
    addresses: Sequence[str] = (),
    *,
    certs_dir: Path | None = CONTAINERD_CERTS_DIR,
    conf_dir: Path | None = REGISTRIES_CONF_DIR,
    alias_domain: str = "",
    host_root: Path | None = None,
) -> list[RuntimeConfig]:
    """One result per registry: the containerd and CRI-O files that send it to the agent
    (a directory of ``None`` is not looked at)."""
    out = []
    for registry in registries:
        found = RuntimeConfig(registry)
        if certs_dir is not None:
            found = check_containerd(certs_dir, registry, port, addresses, alias_domain, host_root)
        if conf_dir is not None:
            check_crio(conf_dir, registry, port, addresses, found, alias_domain, host_root)
        out.append(found)
    return out
