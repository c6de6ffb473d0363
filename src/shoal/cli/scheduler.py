"""``shoal scheduler``: run a scheduler (tasks, parents, the origin lease) for the agents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from shoal.cli.runtime import run, run_until_signalled
from shoal.core.hosts import is_loopback_host
from shoal.core.units import parse_duration
from shoal.scheduler.config import (
    DEFAULT_PORT,
    ConfigError,
    SchedulerConfig,
    require_peer_auth,
    require_tls,
)
from shoal.scheduler.policy import PARENT_POLICIES

DEFAULTS = SchedulerConfig()


def read_token(path: Path) -> str:
    from shoal.ops.failures import describe

    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise click.BadParameter(describe(exc), param_hint="--peer-token-file") from None
    except UnicodeDecodeError:
        raise click.BadParameter(f"{path}: not UTF-8 text", param_hint="--peer-token-file") from None
    if not token:
        raise click.BadParameter(f"{path} is empty", param_hint="--peer-token-file")
    return token


@click.command()
@click.option("--listen", default=DEFAULTS.listen, show_default=True, help="HOST:PORT to serve the API on.")
@click.option(
    "--peer-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File holding the secret agents send (Authorization: Bearer). Required unless --insecure-no-peer-auth.",
)
@click.option(
    "--insecure-no-peer-auth",
    is_flag=True,
    help="Serve the API without a peer token: anyone who reaches it steers every pull. Labs only (logs a warning).",
)
@click.option(
    "--tls-ca-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory with the CA key pair (tls.crt, tls.key): serve TLS 1.3 and issue node certificates. "
    "Required unless --insecure-no-tls.",
)
@click.option(
    "--insecure-no-tls",
    is_flag=True,
    help="Serve plain HTTP: the peer token and every call cross the network in clear. Labs only (logs a warning).",
)
@click.option(
    "--tls-name",
    "tls_names",
    multiple=True,
    metavar="DNS",
    help="A name clients reach this scheduler by, for its certificate (repeatable; *.SUFFIX for replicas).",
)
@click.option(
    "--tls-ip",
    "tls_ips",
    multiple=True,
    metavar="IP",
    help="An address clients reach this scheduler by, for its certificate (repeatable; --listen's own is added).",
)
@click.option(
    "--cert-ttl",
    default="24h",
    show_default=True,
    help="Lifetime of the node certificates issued (agents renew at two thirds of it).",
)
@click.option(
    "--agent-service-account",
    metavar="NAMESPACE:NAME",
    help="Agents prove their node with this ServiceAccount's projected token, checked with the Kubernetes API "
    "(TokenReview, the Pod, its Node). Without it: with the peer token (a lab).",
)
@click.option(
    "--token-audience",
    default=DEFAULTS.token_audience,
    show_default=True,
    help="Audience of the agents' projected ServiceAccount tokens.",
)
@click.option("--kubeconfig", type=click.Path(dir_okay=False), help="Outside a cluster: kubeconfig of the API server.")
@click.option(
    "--max-blob-size",
    type=click.IntRange(min=1, max=(1 << 53) - 1),
    default=DEFAULTS.max_blob_size,
    show_default=True,
    help="Largest blob (bytes) a task may describe; joins and reports of bigger ones get 400.",
)
@click.option(
    "--lease-ttl",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULTS.lease_ttl,
    show_default=True,
    help="Seconds the origin fetcher keeps its lease without reporting.",
)
@click.option(
    "--stall-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULTS.stall_timeout,
    show_default=True,
    help="Seconds without progress after which the origin lease moves to another peer.",
)
@click.option(
    "--peer-ttl",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULTS.peer_ttl,
    show_default=True,
    help="Seconds after which a silent peer is forgotten.",
)
@click.option(
    "--max-parents",
    type=click.IntRange(min=1),
    default=DEFAULTS.max_parents,
    show_default=True,
    help="Parents handed to one downloader.",
)
@click.option(
    "--fallback-leases",
    type=click.IntRange(min=1),
    default=DEFAULTS.fallback_leases,
    show_default=True,
    help="Downloaders of one blob that may go to the origin at a time after their swarm download stalled.",
)
@click.option(
    "--max-children",
    type=click.IntRange(min=1),
    default=DEFAULTS.max_children,
    show_default=True,
    help="Recent children after which a parent is only used when no other is left.",
)
@click.option(
    "--parent-policy",
    type=click.Choice(sorted(PARENT_POLICIES)),
    default=DEFAULTS.parent_policy,
    show_default=True,
    help="How parents are chosen.",
)
def scheduler(
    listen: str,
    peer_token_file: Path | None,
    insecure_no_peer_auth: bool,
    tls_ca_dir: Path | None,
    insecure_no_tls: bool,
    tls_names: tuple[str, ...],
    tls_ips: tuple[str, ...],
    cert_ttl: str,
    agent_service_account: str | None,
    token_audience: str,
    kubeconfig: str | None,
    max_blob_size: int,
    lease_ttl: float,
    stall_timeout: float,
    peer_ttl: float,
    max_parents: int,
    fallback_leases: int,
    max_children: int,
    parent_policy: str,
) -> None:
    """Run a scheduler: tracks which agents hold which pieces, hands out parents and the origin lease.

    Several schedulers can run side by side: agents spread blobs over their --scheduler list
    by rendezvous hashing. State is in memory and rebuilt from the agents' reports.
    """
    token = read_token(peer_token_file) if peer_token_file is not None else None
    try:
        config = SchedulerConfig(
            listen=listen,
            peer_token=token,
            insecure_no_peer_auth=insecure_no_peer_auth,
            tls_ca_dir=tls_ca_dir,
            insecure_no_tls=insecure_no_tls,
            tls_names=tls_names,
            tls_ips=tls_ips,
            cert_ttl=parse_duration(cert_ttl),
            agent_service_account=agent_service_account,
            token_audience=token_audience,
            kubeconfig=kubeconfig,
            max_blob_size=max_blob_size,
            lease_ttl=lease_ttl,
            stall_timeout=stall_timeout,
            peer_ttl=peer_ttl,
            max_parents=max_parents,
            fallback_leases=fallback_leases,
            max_children=max_children,
            parent_policy=parent_policy,
        )
        require_peer_auth(config)
        require_tls(config)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--cert-ttl") from None

    from shoal.scheduler.server import Scheduler

    async def main() -> None:
        try:
            node = Scheduler(config)
        except (OSError, ValueError) as exc:  # CaError, a kubeconfig that does not load
            raise click.ClickException(str(exc)) from None
        await node.start()
        try:
            await run_until_signalled()
        finally:
            await node.stop()

    run(main())


SCHEDULER_CA_OPTION = click.option(
    "--scheduler-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="SHOAL_SCHEDULER_CA",
    help="CA certificate the https schedulers' certificates must chain to (the chart's CA Secret, ca.crt).",
)


def scheduler_connector(schedulers: tuple[str, ...], scheduler_ca: Path | None, token: str | None) -> Any:
    """An aiohttp connector that verifies https schedulers against ``scheduler_ca``; refuses to
    send the peer token to a plain-HTTP scheduler on another host (a listener could replay it)."""
    import ssl

    import aiohttp

    for url in schedulers:
        if url.startswith("https://") and scheduler_ca is None:
            raise click.UsageError(f"scheduler {url}: give --scheduler-ca to verify its certificate")
        host = url.removeprefix("http://").partition("/")[0].rpartition(":")[0].strip("[]")
        if url.startswith("http://") and token is not None and not is_loopback_host(host):
            raise click.UsageError(
                f"scheduler {url}: plain HTTP would send the peer token in clear; use https:// and --scheduler-ca"
            )
    if scheduler_ca is None:
        return aiohttp.TCPConnector()
    context = ssl.create_default_context(cafile=str(scheduler_ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return aiohttp.TCPConnector(ssl=context)


__all__ = ["DEFAULT_PORT", "scheduler"]
