"""``shoal preheat IMAGE``: warm the agents' caches before a rollout."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import click

from shoal.cli.params import URL
from shoal.cli.scheduler import read_token, scheduler_connector


def no_agents(errors: dict[str, str], refused: tuple[str, ...], token_file: Path | None) -> str:
    """Why preheat has no agent to warm: the schedulers' own failures first, then a hint."""
    if refused:
        hint = (
            "pass --peer-token-file with the token the schedulers require"
            if token_file is None
            else f"--peer-token-file {token_file} does not hold the token the schedulers require"
        )
        return f"{'; '.join(errors[u] for u in refused)}\n{hint}"
    if errors:
        return "no scheduler answered: " + "; ".join(errors.values())
    return "the schedulers know no agents: are the agents running, and do they use these schedulers?"


@click.command()
@click.argument("image")
@click.option(
    "--scheduler",
    "schedulers",
    type=URL,
    multiple=True,
    required=True,
    metavar="URL",
    envvar="SHOAL_SCHEDULER",
    help="A scheduler (repeatable; give every replica, or the Service): the agents are found through them.",
)
@click.option(
    "--ca",
    "--scheduler-ca",
    "ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="SHOAL_SCHEDULER_CA",
    help="The cluster's CA certificate (the chart's CA Secret, ca.crt): https schedulers and the agents "
    "must present certificates it issued. With it, agents are asked over TLS.",
)
@click.option(
    "--insecure-agent-http",
    is_flag=True,
    help="Without --ca, ask agents on other hosts over plain HTTP: the peer token and the registry "
    "credentials cross the network in clear. Labs only.",
)
@click.option(
    "--peer-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SHOAL_PEER_TOKEN_FILE",
    help="The shared peer secret the schedulers and agents require.",
)
@click.option("--nodes", metavar="N|A,B,...", help="Only N agents, or these (addresses, hosts or node names).")
@click.option("--creds", metavar="USER:PASSWORD", envvar="SHOAL_CREDS", help="Registry credentials.")
@click.option(
    "--authfile",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Docker config file with the registry's credentials.  [default: $REGISTRY_AUTH_FILE, ~/.docker/config.json]",
)
@click.option(
    "--platform",
    "platforms",
    multiple=True,
    metavar="OS/ARCH",
    help="Platforms of a multi-platform image to warm (repeatable; 'all' for every one).  [default: each node's own]",
)
@click.option("--timeout", type=click.FloatRange(min=1), default=3600, show_default=True, help="Seconds in all.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def preheat(
    image: str,
    schedulers: tuple[str, ...],
    ca: Path | None,
    insecure_agent_http: bool,
    peer_token_file: Path | None,
    nodes: str | None,
    creds: str | None,
    authfile: Path | None,
    platforms: tuple[str, ...],
    timeout: float,
    as_json: bool,
) -> None:
    """Make every agent the schedulers know (or --nodes) pull IMAGE into its cache.

    All agents pull at once, through the swarm, so the registry serves each blob once; a
    node that later starts the image pulls it from its own cache. Exit status 0 when every
    chosen node holds the whole image, 1 otherwise.
    """
    import aiohttp

    from shoal.core.reference import ImageReference, ReferenceError
    from shoal.ops.cluster import list_agents
    from shoal.ops.credentials import CredentialsError, find_credentials
    from shoal.ops.preheat import (
        NodeResult,
        SelectionError,
        clear_text_refusal,
        preheat_nodes_json,
        select_nodes,
        summarize,
    )
    from shoal.ops.preheat import preheat as run_preheat
    from shoal.p2p.preheat import PreheatRequest

    try:
        ref = ImageReference.parse(image)
        found = find_credentials(ref.registry, creds, authfile)
    except (ReferenceError, CredentialsError) as exc:
        raise click.UsageError(str(exc)) from None
    token = read_token(peer_token_file) if peer_token_file is not None else None
    request = PreheatRequest(
        image=str(ref), platforms=list(platforms), authorization=found.basic_header() if found else None
    )

    async def agents() -> Any:
        async with aiohttp.ClientSession(connector=scheduler_connector(schedulers, ca, token)) as session:
            return await list_agents(session, schedulers, token)

    listing = asyncio.run(agents())
    if not listing.agents:
        raise click.ClickException(no_agents(listing.errors, listing.refused, peer_token_file))
    for error in listing.errors.values():
        click.echo(f"warning: {error}", err=True)
    try:
        chosen = select_nodes([v.announcement for v in listing.agents], nodes)
    except SelectionError as exc:
        raise click.UsageError(str(exc)) from None
    if ca is None:
        secrets = [s for s, given in (("the peer token", token), ("the registry credentials", found)) if given]
        refusal = clear_text_refusal(chosen, secrets)
        if refusal is not None and not insecure_agent_http:
            raise click.UsageError(refusal)
        if refusal is not None:
            sent = " and ".join(secrets)
            click.echo(f"INSECURE: --insecure-agent-http: {sent} cross the network in clear. Labs only.", err=True)
    click.echo(f"preheating {ref} on {len(chosen)} node(s)", err=True)
    finished: list[str] = []

    def progress(agent: Any, event: dict[str, Any]) -> None:
        who = agent.node or agent.address
        kind = event.get("event")
        if kind == "blob":
            state = f"failed: {event['error']}" if "error" in event else "cached" if event["cached"] else "pulled"
            click.echo(f"  {who}: {event['digest'][:19]} {state}", err=True)
        elif kind in ("done", "error"):
            finished.append(who)
            ok = "holds the image" if event.get("held") else f"FAILED: {event.get('error') or 'blobs missing'}"
            click.echo(f"[{len(finished)}/{len(chosen)}] {who} {ok}", err=True)

    started = time.monotonic()
    results: list[NodeResult] = asyncio.run(
        run_preheat(chosen, request, token, ca=ca, on_event=progress, timeout=timeout)
    )
    seconds = time.monotonic() - started
    if as_json:
        click.echo(json.dumps(preheat_nodes_json(str(ref), results, seconds), indent=2))
    else:
        click.echo(summarize(str(ref), results, seconds))
    if not all(r.held for r in results):
        raise SystemExit(1)
