"""``shoal status``: does image acceleration work on this node and in the cluster?"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import click

from shoal.cli.params import URL
from shoal.cli.scheduler import SCHEDULER_CA_OPTION, read_token, scheduler_connector


@click.command()
@click.option(
    "--agent",
    "agent_url",
    type=URL,
    default="http://127.0.0.1:65001",
    show_default=True,
    envvar="SHOAL_AGENT",
    help="The node's agent, as the runtime reaches it.",
)
@click.option(
    "--registry",
    "registries",
    multiple=True,
    metavar="HOST",
    help="Registries whose runtime config to check (repeatable).  [default: the agent's]",
)
@click.option(
    "--scheduler",
    "schedulers",
    type=URL,
    multiple=True,
    metavar="URL",
    envvar="SHOAL_SCHEDULER",
    help="Check the cluster through these schedulers (repeatable); without it only the node is checked.",
)
@click.option(
    "--webhook", type=URL, metavar="URL", help="Check that the webhook answers (e.g. https://shoal-webhook.NS.svc)."
)
@SCHEDULER_CA_OPTION
@click.option(
    "--peer-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SHOAL_PEER_TOKEN_FILE",
    help="The shared peer secret (the schedulers' agent list needs it).",
)
@click.option(
    "--host-root",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SHOAL_HOST_ROOT",
    help="Where the node's root is mounted, to read the runtime's files from a container (the agent "
    "Pod: /host). The three paths below stay as the node sees them.  [default: /, on the node itself]",
)
@click.option(
    "--containerd-certs-dir",
    metavar="DIR",
    default="/etc/containerd/certs.d",
    show_default=True,
    envvar="SHOAL_CONTAINERD_CERTS_DIR",
    help="containerd's config_path directory of hosts.toml files; empty: not checked.",
)
@click.option(
    "--registries-conf-dir",
    metavar="DIR",
    default="/etc/containers/registries.conf.d",
    show_default=True,
    envvar="SHOAL_REGISTRIES_CONF_DIR",
    help="CRI-O's (containers-registries.conf.d) drop-in directory; empty: not checked.",
)
@click.option(
    "--containerd-config",
    type=click.Path(dir_okay=False, path_type=Path),
    default="/etc/containerd/config.toml",
    show_default=True,
    envvar="SHOAL_CONTAINERD_CONFIG",
    help="containerd's config.toml, checked for the config_path that makes it read --containerd-certs-dir.",
)
@click.option(
    "--alias-domain",
    default="",
    envvar="SHOAL_ALIAS_DOMAIN",
    help="DNS suffix of the rewrite alias hosts (the chart's aliasDomain).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def status(
    agent_url: str,
    registries: tuple[str, ...],
    schedulers: tuple[str, ...],
    webhook: str | None,
    scheduler_ca: Path | None,
    peer_token_file: Path | None,
    host_root: Path | None,
    containerd_certs_dir: str,
    registries_conf_dir: str,
    containerd_config: Path,
    alias_domain: str,
    as_json: bool,
) -> None:
    """Check the agent, its schedulers, the runtime's mirror config, the cache and recent
    fallbacks on this node; with --scheduler, also the cluster's agents, scheduler replicas
    and (with --webhook) the webhook. Exit status 1 when a check fails.

    docs/troubleshooting.md explains each check and what to do when it fails.
    """
    import aiohttp

    from shoal.ops import status as checks

    token = read_token(peer_token_file) if peer_token_file is not None else None
    certs_dir = Path(containerd_certs_dir) if containerd_certs_dir else None
    conf_dir = Path(registries_conf_dir) if registries_conf_dir else None
    for flag, given in (
        ("--containerd-certs-dir", certs_dir),
        ("--registries-conf-dir", conf_dir),
        ("--containerd-config", containerd_config),
    ):
        if host_root is not None and given is not None and not given.is_absolute():
            raise click.BadParameter(
                f"{str(given)!r}: with --host-root, paths are the node's and absolute", param_hint=flag
            )
    if host_root is not None and not host_root.is_dir():
        raise click.BadParameter(f"{host_root}: no such directory", param_hint="--host-root")
    # the runtime's files are out of sight in a Pod unless mounted: say so when they are missing
    hint = checks.IN_POD_HINT if host_root is None and os.environ.get("KUBERNETES_SERVICE_HOST") else None

    async def gather() -> checks.Report:
        async with aiohttp.ClientSession(connector=scheduler_connector(schedulers, scheduler_ca, token)) as session:
            node = await checks.gather_node(session, agent_url)
            runtime = checks.node_runtime(node, registries, certs_dir, conf_dir, alias_domain, host_root)
            found = checks.node_checks(node, runtime, hint)
            found.insert(3, checks.containerd_config_check(containerd_config, certs_dir, host_root))
            if schedulers or webhook:
                cluster = await checks.gather_cluster(session, list(schedulers), token, webhook)
                found += checks.cluster_checks(cluster)
        return checks.Report(found)

    report = asyncio.run(gather())
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else checks.render(report))
    if not report.ok:
        raise SystemExit(1)
