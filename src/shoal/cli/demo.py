"""``shoal demo``: the main job on one machine — N nodes start the same image at once."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn
from rich.table import Table

from shoal.core.units import format_bytes, parse_size
from shoal.demo.fleet import LocalFleet, scrape
from shoal.demo.puller import pull_image

DEMO_REGISTRY = "registry.demo"
DEMO_REPOSITORY = "demo/app"


def _metric(values: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in values.items() if k.startswith(prefix))


@click.command()
@click.option("--nodes", default=8, show_default=True, type=click.IntRange(1, 200), help="Agents to run.")
@click.option("--size", default="256M", show_default=True, help="Total layer bytes of the generated image.")
@click.option("--layers", default=4, show_default=True, type=click.IntRange(1, 64))
@click.option(
    "--download-pattern",
    type=click.Choice(["p2p", "source"]),
    default="p2p",
    show_default=True,
    help="source: every agent fetches from the origin itself (for comparison).",
)
@click.option("--origin", "origin_url", help="Use this registry URL as the origin instead of the built-in one.")
@click.option("--image", help="With --origin: the image to pull, e.g. team/app:v1 (repository:tag on that registry).")
@click.option(
    "--origin-rate",
    default="0",
    show_default=True,
    help="Cap the built-in origin's upload (bytes/s, e.g. 100M) to show a registry bottleneck; 0: none.",
)
@click.option(
    "--insecure-no-tls",
    is_flag=True,
    help="Run the scheduler without TLS and the agents without node certificates (compare the cost).",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep logs and caches here (default: a temporary directory, removed afterwards).",
)
def demo(
    nodes: int,
    size: str,
    layers: int,
    download_pattern: str,
    origin_url: str | None,
    image: str | None,
    origin_rate: str,
    insecure_no_tls: bool,
    workdir: Path | None,
) -> None:
    """Run an origin, a scheduler and N agents on 127.0.0.x, and pull one image on every node at once."""
    if (origin_url is None) != (image is None):
        raise click.UsageError("--origin and --image go together")
    console = Console()
    with tempfile.TemporaryDirectory(prefix="shoal-demo-") as tmp:
        root = workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        asyncio.run(
            _demo(
                console,
                root,
                nodes,
                parse_size(size),
                layers,
                download_pattern,
                origin_url,
                image,
                parse_size(origin_rate),
                not insecure_no_tls,
            )
        )


async def _demo(
    console: Console,
    root: Path,
    nodes: int,
    size: int,
    layers: int,
    pattern: str,
    origin_url: str | None,
    image: str | None,
    origin_rate: int,
    tls: bool,
) -> None:
    from shoal.demo.imagegen import generate_image
    from shoal.demo.origin import DemoOrigin

    origin: DemoOrigin | None = None
    if origin_url is None:
        console.print(f"generating a {layers}-layer image of {format_bytes(size)} ...")
        generated = await asyncio.to_thread(generate_image, root / "image", size=size, layers=layers, tag="v1")
        origin = DemoOrigin({DEMO_REPOSITORY: generated}, upload_rate=origin_rate or None)
        origin_url = await origin.start()
        repository, tag, image_bytes = DEMO_REPOSITORY, "v1", generated.blob_bytes
    else:
        assert image is not None
        repository, _, tag = image.partition(":")
        tag = tag or "latest"
        image_bytes = 0
    try:
        fleet = LocalFleet(
            root / "fleet", nodes=nodes, registries={DEMO_REGISTRY: origin_url}, download_pattern=pattern, tls=tls
        )
        console.print(f"starting {'a scheduler and ' if pattern == 'p2p' else ''}{nodes} agents ...")
        await asyncio.to_thread(fleet.start)
        try:
            await _rollout(console, fleet, repository, tag, image_bytes, origin)
        finally:
            await asyncio.to_thread(fleet.stop)
    finally:
        if origin is not None:
            await origin.stop()


async def _rollout(
    console: Console, fleet: LocalFleet, repository: str, tag: str, image_bytes: int, origin: object
) -> None:
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    times: dict[int, float] = {}
    errors: dict[int, str] = {}
    started = time.monotonic()

    async def pull(index: int) -> None:
        node = fleet.nodes[index]
        task = progress.add_task(f"node {index:>2} {node.address}", total=image_bytes or None)
        try:
            result = await pull_image(
                node.url, f"{DEMO_REGISTRY}/{repository}", tag, progress=lambda n: progress.advance(task, n)
            )
            times[index] = result.seconds
            progress.update(task, total=result.blob_bytes, completed=result.blob_bytes)
        except Exception as exc:
            errors[index] = str(exc)

    with progress:
        await asyncio.gather(*(pull(i) for i in range(len(fleet.nodes))))
    wall = time.monotonic() - started
    metrics = [await asyncio.to_thread(scrape, node.url) for node in fleet.nodes]
    table = Table(title=f"{len(fleet.nodes)} nodes pulled {DEMO_REGISTRY}/{repository}:{tag} at once")
    for column in ("node", "time", "from origin", "from peers", "uploaded to peers"):
        table.add_column(column, justify="right")
    for i, node in enumerate(fleet.nodes):
        m = metrics[i]
        table.add_row(
            f"{i} {node.address}",
            f"{times[i]:.2f}s" if i in times else f"[red]failed: {errors[i][:60]}",
            format_bytes(_metric(m, "shoal_agent_origin_bytes_total")),
            format_bytes(_metric(m, "shoal_agent_peer_bytes_total{direction=download")),
            format_bytes(_metric(m, "shoal_agent_peer_bytes_total{direction=upload")),
        )
    console.print(table)
    total_origin = sum(_metric(m, "shoal_agent_origin_bytes_total") for m in metrics)
    served = getattr(origin, "blob_bytes_served", None)
    console.print(f"rollout wall time: {wall:.2f}s")
    if image_bytes:
        console.print(
            f"origin egress: {format_bytes(served if served is not None else total_origin)} = "
            f"[bold]{(served if served is not None else total_origin) / image_bytes:.2f}x[/] the image "
            f"({format_bytes(image_bytes)}); with direct pulls it would be {len(fleet.nodes)}.00x"
        )
    if errors:
        raise click.ClickException(f"{len(errors)} of {len(fleet.nodes)} pulls failed")
