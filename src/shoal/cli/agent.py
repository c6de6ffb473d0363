"""``shoal agent``: run the node's mirror (and swarm peer)."""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path
from typing import Any

import click

from shoal.agent.config import DEFAULT_PORT, ConfigError, load_config, load_yaml
from shoal.agent.swarm_settings import SCHEDULER_LEASE_TTL, SwarmSettings
from shoal.cli.runtime import run, run_until_signalled
from shoal.cli.scheduler import read_token
from shoal.ops.failures import describe

SWARM_FLAGS = ("max_parents", "stall_timeout", "piece_timeout", "max_peer_links")
"""flags that set a key of the config file's ``swarm:`` section (the ones operators tune)"""
_SWARM = SwarmSettings()


def merge_flags(values: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """Config-file values overridden by the flags given; ``--scheduler A,B`` counts as two, and
    ``--max-parents`` and the other swarm flags override single keys of the file's ``swarm:``."""
    out = dict(values)
    for key, value in flags.items():
        if value is None or value == ():
            continue
        out[key] = list(value) if isinstance(value, tuple) else value
    swarm = {key: out.pop(key) for key in SWARM_FLAGS if key in out}
    if swarm:
        section = values.get("swarm") or {}
        if not isinstance(section, dict):
            raise ConfigError(f"swarm: want a mapping of keys, not {section!r}")
        out["swarm"] = {**section, **swarm}
    if flags.get("schedulers"):
        # the chart passes every scheduler replica in one argument: URL,URL,...
        out["schedulers"] = [u.strip() for v in flags["schedulers"] for u in v.split(",") if u.strip()]
    return out


@click.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML file with the same keys as the flags (snake_case); flags override it.",
)
@click.option("--listen", help=f"HOST:PORT to serve on.  [default: 127.0.0.1:{DEFAULT_PORT}]")
@click.option("--advertise", help="HOST:PORT peers use to reach this agent.  [default: --listen]")
@click.option(
    "--registry",
    "registries",
    multiple=True,
    metavar="NAME[=URL]",
    help="A registry to mirror, as named in image references; URL is where to fetch it "
    "(default https://NAME; docker.io means Docker Hub). Repeatable.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Cache directory (content-addressed, survives restarts).  [default: /var/lib/shoal]",
)
@click.option("--cache-ttl", help="Delete cached data not read for this long.  [default: 24h]")
@click.option(
    "--cache-max-size",
    help="Evict least recently used blobs beyond this size, e.g. 50G.  [default: no cap but the disk]",
)
@click.option(
    "--scheduler",
    "schedulers",
    multiple=True,
    metavar="URL",
    help="Scheduler URL (repeatable, or comma-separated; blobs are spread over them by rendezvous hashing).",
)
@click.option("--zone", help="This node's topology zone; the scheduler prefers parents in it.  [default: none]")
@click.option("--ratelimit", help="Total upload+download bytes per second.  [default: 512M]")
@click.option(
    "--download-pattern",
    type=click.Choice(["p2p", "source"]),
    help="p2p: share pieces with peers; source: plain caching mirror.  [default: p2p]",
)
@click.option(
    "--peer-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File holding the shared secret that peers and the scheduler require (needed in p2p mode).",
)
@click.option(
    "--insecure-no-peer-auth",
    is_flag=True,
    default=None,
    help="Serve peers without a secret: anyone reaching the port can read every cached blob. Labs only.",
)
@click.option(
    "--tls-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="This node's TLS material (ca.pem, node.pem, node.key), kept current by enrolling with https "
    "schedulers: the peer wire and the scheduler calls run TLS 1.3 with it (reloaded when the files change).",
)
@click.option(
    "--scheduler-ca",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CA bundle the scheduler's certificate must chain to.  [default: --tls-dir's ca.pem]",
)
@click.option(
    "--enroll-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The Pod's projected ServiceAccount token (audience shoal) that proves this node at enrollment; "
    "without it the peer token is sent (a lab).",
)
@click.option(
    "--insecure-no-tls",
    is_flag=True,
    default=None,
    help="Allow http:// schedulers on other hosts: the peer token crosses the network in clear. Labs only.",
)
@click.option(
    "--insecure-peer-wire",
    is_flag=True,
    default=None,
    help="Run the peer wire in clear even with --tls-dir: layers cross the network readable. Labs only.",
)
@click.option("--max-connections", type=int, help="Open connections at most.  [default: 4096, below the fd limit]")
@click.option("--header-timeout", help="Time a new connection has to send a request.  [default: 10s]")
@click.option("--keepalive-timeout", help="Time an idle keep-alive connection is kept.  [default: 60s]")
@click.option("--send-timeout", help="Time each 8 MiB of a blob response may take to leave.  [default: 30s]")
@click.option(
    "--outage-grace",
    help="While the registry cannot answer, serve what the cluster holds to clients it confirmed "
    "within this long; 0 turns it off.  [default: 24h]",
)
@click.option(
    "--registry-timeout",
    help="Time the registry has to answer before held content is served instead.  [default: 5s]",
)
@click.option("--outage-probe-interval", help="Time between probes of a registry marked down as hung.  [default: 2s]")
@click.option(
    "--containerd-content-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="containerd's content store (io.containerd.content.v1.content), read-only: a source of blobs.",
)
@click.option(
    "--alias-port",
    type=int,
    help="Port of the webhook's rewrite alias hosts <registry host>:<port>.  [default: --listen's port]",
)
@click.option("--alias-domain", help="DNS suffix of the rewrite alias hosts (as given to the webhook).")
@click.option(
    "--max-parents",
    type=int,
    help=f"Parents one download takes pieces from (swarm.max_parents).  [default: {_SWARM.max_parents}]",
)
@click.option(
    "--stall-timeout",
    help="Time without progress before the rest of a blob comes from the registry; keep it above the "
    f"scheduler's {SCHEDULER_LEASE_TTL:g}s lease TTL (swarm.stall_timeout).  [default: {_SWARM.stall_timeout:g}s]",
)
@click.option(
    "--piece-timeout",
    help="Time a piece request may go unanswered before it is counted as failed (swarm.piece_timeout).  "
    f"[default: {_SWARM.piece_timeout:g}s]",
)
@click.option(
    "--max-peer-links",
    type=int,
    help=f"Peer links open at once, in and out (swarm.max_peer_links).  [default: {_SWARM.max_peer_links}]",
)
def agent(config_file: Path | None, **flags: Any) -> None:
    """Run the node agent: an OCI pull-through mirror with a disk cache on every node."""
    values: dict[str, Any] = load_yaml(config_file) if config_file else {}
    try:
        config = load_config(merge_flags(values, flags))
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if config.peer_token_file is not None:
        read_token(config.peer_token_file)  # a missing or empty file is a usage error, before anything starts

    from shoal.agent.enrollment import tls_problem

    problem = tls_problem(config)
    if problem is not None:
        raise click.UsageError(problem)

    from shoal.agent.server import Agent

    async def main() -> None:
        # file writes, hashing and fsyncs of every blob in flight run in worker threads; the
        # default pool (cores + 4) let a few slow fsyncs hold up everyone's writes
        asyncio.get_running_loop().set_default_executor(
            concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="shoal-io")
        )
        node = Agent(config)
        try:
            await node.start()
        except BaseException as exc:
            await node.stop()  # a half-started agent: close what it opened (its client session)
            if isinstance(exc, OSError):
                message = describe(exc)
                prefix = "" if message.startswith("cannot listen") else f"cannot listen on {config.listen}: "
                raise click.ClickException(prefix + message) from None
            raise
        try:
            await run_until_signalled()
        finally:
            await node.stop()

    run(main(), uvloop_ok=False)
