"""``shoal node-config``: route a node's image pulls through its agent, with the registry as fallback."""

from __future__ import annotations

from pathlib import Path

import click

from shoal.core.aliases import AliasError
from shoal.core.registry_spec import RegistrySpecError, parse_registry
from shoal.nodeconfig.containerd import check_config_path
from shoal.nodeconfig.files import Outcome, apply, remove
from shoal.nodeconfig.render import Mode, plan

DEFAULT_AGENT = "127.0.0.1:65001"
DEFAULT_CERTS_DIR = "/etc/containerd/certs.d"
DEFAULT_REGISTRIES_CONF_DIR = "/etc/containers/registries.conf.d"
DEFAULT_CONTAINERD_CONFIG = "/etc/containerd/config.toml"


def _agent_port(agent: str) -> int:
    host, sep, port = agent.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{agent!r}: want HOST:PORT", param_hint="--agent")
    return int(port)


def _report(outcome: Outcome) -> None:
    for verb, paths in (
        ("wrote", outcome.written),
        ("unchanged", outcome.unchanged),
        ("removed", outcome.removed),
    ):
        for path in paths:
            click.echo(f"{verb} {path}")
    for path in outcome.foreign:
        click.echo(f"left alone {path}: not written by shoal node-config (remove it to let Shoal manage it)", err=True)


def _dirs(certs_dir: str, registries_conf_dir: str) -> list[tuple[str, Path]]:
    return [(kind, Path(d)) for kind, d in (("containerd", certs_dir), ("registries.conf.d", registries_conf_dir)) if d]


@click.command("node-config")
@click.option(
    "--registry",
    "registries",
    multiple=True,
    metavar="NAME[=URL]",
    help="A registry as named in image references; URL is its origin, the fallback "
    "(default https://NAME; docker.io means Docker Hub). Repeatable; the agent's syntax.",
)
@click.option("--agent", default=DEFAULT_AGENT, show_default=True, help="HOST:PORT of the node's agent.")
@click.option(
    "--mode",
    type=click.Choice([m.value for m in Mode]),
    default=Mode.MIRROR.value,
    show_default=True,
    help="mirror: route the registry's own host name; rewrite: the webhook's alias host; both.",
)
@click.option("--alias-port", type=int, help="Port of the rewrite alias hosts.  [default: --agent's port]")
@click.option("--alias-domain", default="", help="DNS suffix of the rewrite alias hosts (as given to the webhook).")
@click.option(
    "--containerd-certs-dir",
    default=DEFAULT_CERTS_DIR,
    show_default=True,
    help="containerd's config_path directory for hosts.toml files; empty: write none.",
)
@click.option(
    "--registries-conf-dir",
    default=DEFAULT_REGISTRIES_CONF_DIR,
    show_default=True,
    help="containers-image (CRI-O, podman) registries.conf.d directory; empty: write none.",
)
@click.option(
    "--containerd-config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_CONTAINERD_CONFIG,
    show_default=True,
    help="containerd's config.toml, checked for config_path.",
)
@click.option(
    "--require-config-path",
    is_flag=True,
    help="Exit 1 when containerd's config.toml exists and does not make it read the certs dir "
    "(a node without that file, e.g. CRI-O's, only gets the warning).",
)
@click.option("--prune", is_flag=True, help="Also remove node-config's files for hosts no longer listed.")
@click.option("--remove", "remove_", is_flag=True, help="Remove every file node-config wrote, and exit.")
@click.option("--dry-run", is_flag=True, help="Print the files instead of writing them.")
def node_config(
    registries: tuple[str, ...],
    agent: str,
    mode: str,
    alias_port: int | None,
    alias_domain: str,
    containerd_certs_dir: str,
    registries_conf_dir: str,
    containerd_config: Path,
    require_config_path: bool,
    prune: bool,
    remove_: bool,
    dry_run: bool,
) -> None:
    """Write containerd hosts.toml files and a registries.conf.d drop-in: agent first, registry as fallback.

    Idempotent; touches only its own files (first line says so). Files stay when Shoal is
    uninstalled, so rewritten Pods keep pulling from the registry; --remove takes them away.
    """
    dirs = _dirs(containerd_certs_dir, registries_conf_dir)
    if remove_:
        for _, root in dirs:
            _report(remove(root))
        return
    if not registries:
        raise click.UsageError("at least one --registry NAME[=URL] is required")
    port = _agent_port(agent)
    try:
        parsed = dict(parse_registry(spec) for spec in registries)
        files = plan(parsed, Mode(mode), agent, alias_port=alias_port or port, alias_domain=alias_domain)
    except (RegistrySpecError, AliasError) as exc:
        raise click.UsageError(str(exc)) from None
    by_kind = {"containerd": files.containerd, "registries.conf.d": files.registries_d}
    if dry_run:
        for kind, root in dirs:
            for relative, content in sorted(by_kind[kind].items()):
                click.echo(f"--- {root / relative}\n{content}")
        return
    total = Outcome()
    for kind, root in dirs:
        total.merge(apply(by_kind[kind], root, prune=prune))
    _report(total)
    if registries_conf_dir and any(p.parent == Path(registries_conf_dir) for p in total.written):
        click.echo("registries.conf.d changed: CRI-O reads it at start and on reload (systemctl reload crio)")
    if containerd_certs_dir:
        text = containerd_config.read_text() if containerd_config.is_file() else None
        check = check_config_path(text, Path(containerd_certs_dir), containerd_config)
        click.echo(("containerd: " if check.ok else "WARNING: ") + check.message, err=not check.ok)
        if require_config_path and not check.ok and text is not None:
            raise SystemExit(1)
