"""``shoal demo``: the main job on one machine — N nodes start the same image at once."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn
from rich.table import Table

from shoal.cli.params import SIZE, URL
from shoal.core.reference import ReferenceError, validate_registry, validate_repository, validate_tag
from shoal.core.units import format_bytes
from shoal.demo.fleet import LocalFleet, scrape
from shoal.demo.puller import PullError, pull_image
from shoal.ops.failures import describe

DEMO_REGISTRY = "registry.demo"
DEMO_REPOSITORY = "demo/app"


def _metric(values: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in values.items() if k.startswith(prefix))


def _image(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, str] | None:
    """``--image team/app:v1`` -> (repository, tag); the tag defaults to latest."""
    if value is None:
        return None
    repository, _, tag = value.partition(":")
    try:
        return validate_repository(repository), validate_tag(tag or "latest")
    except ReferenceError as exc:
        raise click.BadParameter(f"{value!r}: {exc} (want REPOSITORY[:TAG], e.g. team/app:v1)") from None


def registry_name(origin_url: str) -> str:
    """The name the agents mirror the origin under: its host[:port], as an image reference names it."""
    try:
        return validate_registry(urlsplit(origin_url).netloc)
    except ReferenceError:
        return DEMO_REGISTRY


@click.command()
@click.option("--nodes", default=8, show_default=True, type=click.IntRange(1, 200), help="Agents to run.")
@click.option("--size", type=SIZE, default="256M", show_default=True, help="Total layer bytes of the generated image.")
@click.option(
    "--layers", default=4, show_default=True, type=click.IntRange(1, 64), help="Layers of the generated image."
)
@click.option(
    "--download-pattern",
    type=click.Choice(["p2p", "source"]),
    default="p2p",
    show_default=True,
    help="source: every agent fetches from the origin itself (for comparison).",
)
@click.option(
    "--origin", "origin_url", type=URL, help="Use this registry URL as the origin instead of the built-in one."
)
@click.option(
    "--image",
    metavar="REPOSITORY[:TAG]",
    callback=_image,
    help="With --origin: the image to pull, e.g. team/app:v1 (repository:tag on that registry).",
)
@click.option(
    "--origin-rate",
    type=SIZE,
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
    size: int,
    layers: int,
    download_pattern: str,
    origin_url: str | None,
    image: tuple[str, str] | None,
    origin_rate: int,
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
                size,
                layers,
                download_pattern,
                origin_url,
                image,
                origin_rate,
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
    image: tuple[str, str] | None,
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
        registry = DEMO_REGISTRY
    else:
        assert image is not None
        (repository, tag), image_bytes = image, 0
        registry = registry_name(origin_url)
    try:
        fleet = LocalFleet(
            root / "fleet", nodes=nodes, registries={registry: origin_url}, download_pattern=pattern, tls=tls
        )
        console.print(f"starting {'a scheduler and ' if pattern == 'p2p' else ''}{nodes} agents ...")
        await asyncio.to_thread(fleet.start)
        try:
            await _rollout(console, fleet, f"{registry}/{repository}", tag, image_bytes, origin)
        finally:
            await asyncio.to_thread(fleet.stop)
    finally:
        if origin is not None:
            await origin.stop()


async def _rollout(console: Console, fleet: LocalFleet, name: str, tag: str, image_bytes: int, origin: object) -> None:
    """Pull ``name:tag`` (registry/repository, as the agents mirror it) on every node at once."""
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
            result = await pull_image(node.url, name, tag, progress=lambda n: progress.advance(task, n))
            times[index] = result.seconds
            progress.update(task, total=result.blob_bytes, completed=result.blob_bytes)
        except PullError as exc:
            errors[index] = str(exc)
        except Exception as exc:
            errors[index] = describe(exc)

    with progress:
        await asyncio.gather(*(pull(i) for i in range(len(fleet.nodes))))
    wall = time.monotonic() - started
    metrics = [await asyncio.to_thread(scrape, node.url) for node in fleet.nodes]
    table = Table(title=f"{len(fleet.nodes)} nodes pulled {name}:{tag} at once")
    for column in ("node", "time", "from origin", "from peers", "uploaded to peers"):
        table.add_column(column, justify="right")
    for i, node in enumerate(fleet.nodes):
        m = metrics[i]
        table.add_row(
            f"{i} {node.address}",
            f"{times[i]:.2f}s" if i in times else "[red]failed",
            format_bytes(_metric(m, "shoal_agent_origin_bytes_total")),
            format_bytes(_metric(m, "shoal_agent_peer_bytes_total{direction=download")),
            format_bytes(_metric(m, "shoal_agent_peer_bytes_total{direction=upload")),
        )
    console.print(table)
    for i, error in sorted(errors.items()):
        console.print(f"node {i} {fleet.nodes[i].address}: {error}", markup=False, highlight=False, overflow="fold")
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
