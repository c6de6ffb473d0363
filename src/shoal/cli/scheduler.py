"""``shoal scheduler``: run a scheduler (tasks, parents, the origin lease) for the agents."""

from __future__ import annotations

from pathlib import Path

import click

from shoal.cli.runtime import run, run_until_signalled
from shoal.scheduler.config import DEFAULT_PORT, ConfigError, SchedulerConfig, require_peer_auth
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
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None

    from shoal.scheduler.server import Scheduler

    async def main() -> None:
        node = Scheduler(config)
        await node.start()
        try:
            await run_until_signalled()
        finally:
            await node.stop()

    run(main())


__all__ = ["DEFAULT_PORT", "scheduler"]
