"""The names under which a registry reaches the node agent, shared by webhook, node-config, agent.

Two kinds of alias, both pure functions of the registry name:

- the **rewrite alias host** ``<registry host>[.<domain>]:<p2p port>`` that the webhook writes
  into Pod specs (``harbor.local:5000/team/app:v1`` -> ``harbor.local:65001/team/app:v1``);
  the registry's own port is dropped, so the result is a valid image reference. containerd
  never resolves it: node-config's ``hosts.toml`` for it names the agent as mirror and the
  real registry as ``server``; the mirror request carries it as ``?ns=<alias host>``.
- the **path name** a containers-image (CRI-O, podman) mirror location uses: that library
  sends ``/v2/<path>/<repo>/...`` with no ``?ns=``, and a ``host:port`` cannot be a path
  component, so ``harbor.local:5000`` travels as ``harbor.local-5000``.

The agent maps both back with :func:`alias_table`.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

from shoal.core.reference import REPOSITORY_RE, ReferenceError, validate_registry

__all__ = ["AliasError", "alias_host", "alias_table", "path_name", "split_port", "validate_domain"]


class AliasError(ValueError):
    """Aliases that cannot work: two registries on one alias, or an alias that is a registry."""


def split_port(registry: str) -> tuple[str, int | None]:
    """``harbor.local:5000`` -> (``harbor.local``, 5000); ``[::1]:5000`` -> (``[::1]``, 5000)."""
    host, sep, port = registry.rpartition(":")
    if sep and port.isdigit() and not host.endswith(":"):
        return host, int(port)
    return registry, None


def validate_domain(domain: str) -> str:
    """An alias domain is a DNS suffix (``p2p.internal``) or empty."""
    domain = domain.strip().strip(".")
    if domain:
        try:
            validate_registry(domain)
        except ReferenceError:
            raise AliasError(f"invalid alias domain {domain!r}: want a DNS name such as p2p.internal") from None
        if ":" in domain or domain.startswith("["):
            raise AliasError(f"invalid alias domain {domain!r}: a DNS name without a port")
    return domain.lower()


def alias_host(registry: str, port: int, domain: str = "") -> str:
    """The rewrite alias host of ``registry`` for an agent on ``port``."""
    host, _ = split_port(registry)
    domain = validate_domain(domain)
    if domain:
        if host.startswith("["):
            raise AliasError(f"registry {registry!r}: an IPv6 address cannot take an alias domain")
        host = f"{host}.{domain}"
    return f"{host.lower()}:{port}"


def path_name(registry: str) -> str | None:
    """The repository-path spelling of ``registry`` for a containers-image mirror location.

    None when no spelling exists (IPv6 addresses); the registry itself when it is one already.
    """
    host, port = split_port(registry)
    name = (host if port is None else f"{host}-{port}").lower()
    return name if REPOSITORY_RE.fullmatch(name) and "/" not in name else None


@cache
def _table(registries: tuple[str, ...], port: int | None, domain: str, strict: bool) -> dict[str, str]:
    table: dict[str, str] = {}
    ambiguous: set[str] = set()

    def add(alias: str, registry: str) -> None:
        if alias == registry:
            return
        if alias in registries:
            if strict:
                raise AliasError(
                    f"alias {alias!r} of {registry!r} is itself a configured registry; accelerate only one of them"
                )
            return
        other = table.setdefault(alias, registry)
        if other != registry:
            if strict:
                raise AliasError(
                    f"registries {other!r} and {registry!r} share the alias {alias!r}; "
                    "accelerate only one of them in rewrite mode"
                )
            ambiguous.add(alias)

    for registry in registries:
        name = path_name(registry)
        if name is not None:
            add(name, registry)
        if port is not None:
            add(alias_host(registry, port, domain), registry)
    return {alias: registry for alias, registry in table.items() if alias not in ambiguous}


def alias_table(
    registries: Iterable[str], port: int | None, domain: str = "", *, strict: bool = True
) -> dict[str, str]:
    """Alias (rewrite host or path name) -> registry, for every registry; ``port`` None: no hosts.

    ``strict=False`` (the agent, which also serves mirror mode) leaves out the aliases that
    would be ambiguous instead of refusing the configuration.

    Raises:
        AliasError: when ``strict``, two registries would share an alias, or an alias names
            another registry; always, for an invalid domain.
    """
    return dict(_table(tuple(sorted(registries)), port, validate_domain(domain), strict))
