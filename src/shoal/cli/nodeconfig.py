"""``shoal node-config``: route a node's image pulls through its agent, with the registry as fallback."""

from __future__ import annotations

from pathlib import Path

import click

from shoal.core.aliases import AliasError
from shoal.core.registry_spec import RegistrySpecError, parse_registry
from shoal.nodeconfig.containerd import check_config_path
from shoal.nodeconfig.files import Outcome, apply, find_tls, registry_prefixes, remove
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


def _on_disk(host_root: str, node_path: str | Path) -> Path:
    """Where a path of the node is from here: under ``host_root`` in a container (the chart
    mounts the node's directories at /host), itself on the node."""
    return Path(host_root) / Path(node_path).relative_to("/") if host_root else Path(node_path)


def _dirs(certs_dir: str, registries_conf_dir: str, host_root: str) -> list[tuple[str, Path]]:
    pairs = (("containerd", certs_dir), ("registries.conf.d", registries_conf_dir))
    return [(kind, _on_disk(host_root, d)) for kind, d in pairs if d]


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
@click.option(
    "--host-root",
    default="",
    help="Where the node's root is mounted (the chart: /host). The other paths are as the node "
    "sees them, which is also what containerd's config_path names.",
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
    host_root: str,
    prune: bool,
    remove_: bool,
    dry_run: bool,
) -> None:
    """Write containerd hosts.toml files and a registries.conf.d drop-in: agent first, registry as fallback.

    Idempotent; touches only its own files (first line says so). Files stay when Shoal is
    uninstalled, so rewritten Pods keep pulling from the registry; --remove takes them away.
    """
    for given in (containerd_certs_dir, registries_conf_dir, str(containerd_config)):
        if host_root and given and not Path(given).is_absolute():
            raise click.UsageError(f"with --host-root, paths are the node's and absolute: {given!r}")
    dirs = _dirs(containerd_certs_dir, registries_conf_dir, host_root)
    if remove_:
        for _, root in dirs:
            _report(remove(root))
        return
    if not registries:
        raise click.UsageError("at least one --registry NAME[=URL] is required")
    port = _agent_port(agent)
    try:
        parsed = dict(parse_registry(spec) for spec in registries)
        certs = Path(containerd_certs_dir)
        tls = (
            {name: find_tls(_on_disk(host_root, certs / name), certs / name) for name in parsed}
            if containerd_certs_dir
            else {}
        )
        taken = frozenset[str]()
        if registries_conf_dir:
            conf_dir = _on_disk(host_root, registries_conf_dir)
            own = sorted(conf_dir.glob("*.conf")) if conf_dir.is_dir() else []
            taken = registry_prefixes([conf_dir.parent / "registries.conf", *own])
        files = plan(
            parsed, Mode(mode), agent, alias_port=alias_port or port, alias_domain=alias_domain, tls=tls, taken=taken
        )
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
    if registries_conf_dir and any(p.parent == _on_disk(host_root, registries_conf_dir) for p in total.written):
        click.echo("registries.conf.d changed: CRI-O reads it at start and on reload (systemctl reload crio)")
    if containerd_certs_dir:
        config_on_disk = _on_disk(host_root, containerd_config)
        text = config_on_disk.read_text() if config_on_disk.is_file() else None
        check = check_config_path(text, Path(containerd_certs_dir), containerd_config)
        click.echo(("containerd: " if check.ok else "WARNING: ") + check.message, err=not check.ok)
        if require_config_path and not check.ok and text is not None:
            raise SystemExit(1)
