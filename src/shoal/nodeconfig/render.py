"""What node-config writes, as pure functions of the registries, the agent and the mode.

For every accelerated registry, one containerd ``hosts.toml`` per host name a Pod may use
(the registry itself in ``mirror`` mode, the webhook's alias host in ``rewrite`` mode), and
one containers-image drop-in (CRI-O, podman) holding a ``[[registry]]`` per host. Each names
the agent as mirror and the registry (its ``NAME=URL`` origin) as the fallback, so a pull
works whenever the node could pull alone: with the agent down, or after Shoal is removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shoal.core.aliases import alias_host, path_name

MARKER = "# Managed by shoal node-config; removed by `shoal node-config --remove`. Do not edit."
HOSTS_TOML = "hosts.toml"
DROP_IN = "shoal.conf"
MIRROR_CAPABILITIES = ("pull", "resolve")


class Mode(StrEnum):
    """Which host names are routed through the agent."""

    MIRROR = "mirror"
    REWRITE = "rewrite"
    BOTH = "both"

    @property
    def hosts(self) -> tuple[str, ...]:
        return {"mirror": ("registry",), "rewrite": ("alias",), "both": ("registry", "alias")}[self.value]


@dataclass(frozen=True, slots=True)
class Route:
    """One host name a Pod's image may carry, routed to the agent first, then to ``origin``."""

    host: str
    """``host[:port]`` as written in image references (a containerd certs.d directory name)."""
    registry: str
    """The registry it stands for (the agent's name for it)."""
    origin: str
    """Base URL of the registry itself: the fallback."""


@dataclass(frozen=True, slots=True)
class RegistryTls:
    """The docker-style TLS files in a registry's own certs.d directory (paths as the node sees
    them). containerd reads ``*.crt`` (CAs) and ``*.cert``/``*.key`` pairs (client certificates)
    only while that directory has no ``hosts.toml``: once node-config writes one, it must name
    them, or pulls from a registry with a private CA fail, agent up or down."""

    ca: tuple[str, ...] = ()
    client: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything node-config owns on a node: relative path -> file content, per directory."""

    containerd: dict[str, str]
    registries_d: dict[str, str]


def routes(registries: dict[str, str], mode: Mode, port: int, domain: str = "") -> list[Route]:
    """The host names to route, for registries ``name -> origin URL``; aliases on ``port``."""
    out: list[Route] = []
    for name in sorted(registries):
        if "registry" in mode.hosts:
            out.append(Route(name, name, registries[name]))
        if "alias" in mode.hosts:
            alias = alias_host(name, port, domain)
            if alias != name:
                out.append(Route(alias, name, registries[name]))
    return out


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_string(value: str) -> str:
    """A TOML basic string holding exactly ``value``: quotes, backslashes and every control
    character (including DEL, which TOML forbids raw) escaped, so no value can end the string
    or the line. The inputs are validated before (``parse_registry``); this is the second wall."""
    out = []
    for char in value:
        if char in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[char])
        elif 0xD800 <= ord(char) <= 0xDFFF:  # a lone surrogate: no TOML escape names it
            out.append("\\uFFFD")
        elif not char.isprintable():  # C0 controls, DEL, line and paragraph separators, ...
            out.append(f"\\u{ord(char):04X}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def toml_comment(text: str) -> str:
    """A one-line ``#`` comment: any line break or control character in ``text`` is shown
    escaped instead of starting a new line of TOML."""
    return "# " + "".join(char if char.isprintable() else f"\\u{ord(char):04X}" for char in text)


def hosts_toml(route: Route, agent_url: str, tls: RegistryTls | None = None) -> str:
    """containerd's ``certs.d/<host>/hosts.toml``: the agent as mirror, the origin as server.

    containerd tries each ``[host]`` in order and falls back to ``server`` when the mirror
    fails (connection refused, 5xx, 404), so the agent is never the only way. The registry's
    own CA and client certificates (``tls``) apply to ``server``.
    """
    capabilities = ", ".join(toml_string(c) for c in MIRROR_CAPABILITIES)
    lines = [
        MARKER,
        toml_comment(f"{route.host} -> agent {agent_url}, else {route.registry} at {route.origin}"),
        f"server = {toml_string(route.origin)}",
    ]
    if tls is not None and tls.ca:
        lines.append(f"ca = [{', '.join(toml_string(c) for c in tls.ca)}]")
    if tls is not None and tls.client:
        pairs = ", ".join(f"[{toml_string(cert)}, {toml_string(key)}]" for cert, key in tls.client)
        lines.append(f"client = [{pairs}]")
    lines += ["", f"[host.{toml_string(agent_url)}]", f"  capabilities = [{capabilities}]", ""]
    return "\n".join(lines)


def _location(url: str) -> tuple[str, bool]:
    """containers-image spells a registry as ``host[:port][/path]`` plus an insecure flag."""
    scheme, _, rest = url.partition("://")
    return rest.rstrip("/"), scheme == "http"


def registries_drop_in(routes_: list[Route], agent: str, taken: frozenset[str] = frozenset()) -> str:
    """A ``registries.conf.d`` drop-in: per host a ``[[registry]]`` whose location is the origin
    and whose first ``[[registry.mirror]]`` is the agent under the registry's path name.

    Routes whose registry has no path spelling (IPv6 literals) are left out, and so are hosts
    in ``taken``: prefixes the operator's own registries.conf or drop-ins define. Tables with
    the same prefix replace each other (containers-registries.conf.d(5)), so ours would drop
    their mirrors, ``insecure`` or ``blocked`` settings: a pull that worked could then fail.
    """
    lines = [MARKER, ""]
    for route in routes_:
        if route.host in taken:
            lines += [toml_comment(f"{route.host}: skipped, the node's own registries.conf already configures it"), ""]
            continue
        name = path_name(route.registry)
        if name is None:
            lines += [toml_comment(f"{route.host}: skipped, {route.registry} has no mirror path spelling"), ""]
            continue
        location, insecure = _location(route.origin)
        lines += [
            "[[registry]]",
            f"prefix = {toml_string(route.host)}",
            f"location = {toml_string(location)}",
        ]
        if insecure:
            lines.append("insecure = true")
        lines += [
            "",
            "[[registry.mirror]]",
            f"location = {toml_string(f'{agent}/{name}')}",
            "insecure = true",
            "",
        ]
    return "\n".join(lines)


def plan(
    registries: dict[str, str],
    mode: Mode,
    agent: str,
    *,
    alias_port: int,
    alias_domain: str = "",
    tls: dict[str, RegistryTls] | None = None,
    taken: frozenset[str] = frozenset(),
) -> Plan:
    """All files for ``registries`` (name -> origin URL) with the agent at ``agent`` (host:port);
    ``tls``: registry name -> the TLS files found in its own certs.d directory; ``taken``: the
    prefixes the node's own containers-registries configuration defines."""
    routed = routes(registries, mode, alias_port, alias_domain)
    agent_url = f"http://{agent}"
    tls = tls or {}
    containerd = {f"{r.host}/{HOSTS_TOML}": hosts_toml(r, agent_url, tls.get(r.registry)) for r in routed}
    return Plan(containerd=containerd, registries_d={DROP_IN: registries_drop_in(routed, agent, taken)})
