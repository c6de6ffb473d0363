"""``shoal install|upgrade|uninstall``: the brief's ``onectl addon`` workflow on the Helm engine.

The Helm logic is in :mod:`shoal.ops.helm`; these commands parse flags, call it, and print
what Helm prints (the release line and the chart's NOTES).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from shoal.ops.chart_values import brief_parameter_problems, helm_problems
from shoal.ops.helm import (
    NAMESPACE,
    RELEASE,
    ReleaseValuesError,
    as_comment,
    build_values,
    deep_merge,
    default_chart,
    helm_config,
    manifests_text,
    notes,
    release_notes,
    release_values,
    release_version,
    render,
)


def _common(func: Any) -> Any:
    options = [
        click.option("--namespace", "-n", default=NAMESPACE, show_default=True),
        click.option("--release-name", default=RELEASE, show_default=True),
        click.option("--kubeconfig", type=click.Path(dir_okay=False), default=None),
        click.option("--kube-context", default=None),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _values_options(func: Any) -> Any:
    func = click.option("--set", "sets", multiple=True, metavar="K=V,...", help="Helm --set expression.")(func)
    func = click.option(
        "-f",
        "--values",
        "values_files",
        multiple=True,
        type=click.Path(exists=True),
        help="Values YAML file.",
    )(func)
    func = click.option(
        "--chart",
        type=click.Path(exists=True, file_okay=True),
        default=None,
        help="Chart directory or .tgz (default: the bundled chart).",
    )(func)
    func = click.option("--dry-run", is_flag=True, help="Print the manifests; change nothing in the cluster.")(func)
    func = click.option("--timeout", default=300, show_default=True, help="Seconds to wait.")(func)
    return func


class ValuesError(click.ClickException):
    """A value the person gave that the chart cannot take: a usage error (exit status 2)."""

    exit_code = 2


def _helm_call(action: str, call: Any) -> Any:
    import helm_python

    try:
        return call()
    except (helm_python.HelmValuesError, helm_python.HelmRenderError) as exc:
        problems = helm_problems(str(exc))
        if problems:
            raise ValuesError("\n".join(problems)) from None
        raise click.ClickException(f"{action} failed: {exc}") from None
    except helm_python.HelmError as exc:
        raise click.ClickException(f"{action} failed: {exc}") from None


def _read_values(values_files: tuple[str, ...], sets: tuple[str, ...]) -> dict[str, Any]:
    """``-f`` files then ``--set``s; the brief's parameters with no meaning here are refused."""
    values: dict[str, Any] = _helm_call("reading values", lambda: build_values(values_files, sets))
    problems = brief_parameter_problems(values)
    if problems:
        raise ValuesError("\n".join(problems))
    return values


@click.command()
@_common
@_values_options
def install(
    namespace: str,
    release_name: str,
    kubeconfig: str | None,
    kube_context: str | None,
    sets: tuple[str, ...],
    values_files: tuple[str, ...],
    chart: str | None,
    dry_run: bool,
    timeout: int,
) -> None:
    """Install Shoal (like ``onectl addon install``), e.g. ``--set registries=reg.example.com``."""
    values = _read_values(values_files, sets)
    chart_path = Path(chart) if chart else default_chart()
    rendered = _helm_call(
        "rendering",
        lambda: render(values, chart=chart_path, release=release_name, namespace=namespace),
    )
    if dry_run:
        click.echo(manifests_text(rendered), nl=False)
        click.echo("# NOTES:\n" + as_comment(notes(rendered)), nl=False)
        return
    config = helm_config(kubeconfig, kube_context, namespace)
    release = _helm_call(
        "install",
        lambda: config.install(
            str(chart_path),
            release_name,
            values,
            namespace=namespace,
            create_namespace=True,
            timeout=timeout,
            wait="watcher",
        ),
    )
    click.echo(f"Addon {release_name}, version {release_version(release)} installed.")
    click.echo(f"\n{release_notes(release) or notes(rendered)}")


@click.command()
@_common
@_values_options
@click.option("--reset-values", is_flag=True, help="Start from chart defaults, not the release's values.")
def upgrade(
    namespace: str,
    release_name: str,
    kubeconfig: str | None,
    kube_context: str | None,
    sets: tuple[str, ...],
    values_files: tuple[str, ...],
    chart: str | None,
    dry_run: bool,
    timeout: int,
    reset_values: bool,
) -> None:
    """Change parameters of an installed Shoal, e.g. ``--set p2p.plusMode.cacheTTL=72h``.

    The release's current values are kept and the new ones applied on top, like
    ``onectl addon upgrade``; ``--dry-run`` reads them from the cluster too, and prints the
    manifests the upgrade would apply.
    """
    values = _read_values(values_files, sets)
    chart_path = Path(chart) if chart else default_chart()
    config = helm_config(kubeconfig, kube_context, namespace)
    if not reset_values:
        try:
            values = deep_merge(release_values(config, release_name, namespace), values)
        except ReleaseValuesError as exc:
            raise click.ClickException(
                f"cannot read the installed release's values to keep them: {exc}; "
                "--reset-values starts from the chart's defaults instead"
            ) from None
    rendered = _helm_call(
        "rendering",
        lambda: render(values, chart=chart_path, release=release_name, namespace=namespace, upgrade=True),
    )
    if dry_run:
        click.echo(manifests_text(rendered), nl=False)
        click.echo("# NOTES:\n" + as_comment(notes(rendered)), nl=False)
        return
    release = _helm_call(
        "upgrade",
        lambda: config.upgrade(
            str(chart_path),
            release_name,
            values,
            namespace=namespace,
            timeout=timeout,
            wait="watcher",
            reset_values=True,  # the release's values are already merged into ``values``
        ),
    )
    click.echo(f"Addon {release_name}, version {release_version(release)} upgraded.")
    if release_notes(release):
        click.echo(f"\n{release_notes(release)}")


@click.command()
@_common
@click.option("--timeout", default=300, show_default=True, help="Seconds to wait.")
def uninstall(
    namespace: str,
    release_name: str,
    kubeconfig: str | None,
    kube_context: str | None,
    timeout: int,
) -> None:
    """Remove Shoal (like ``onectl addon uninstall``); derived pull secrets go with their owners."""
    config = helm_config(kubeconfig, kube_context, namespace)
    _helm_call("uninstall", lambda: config.uninstall(release_name, timeout=timeout))
    click.echo(f"Addon {release_name} uninstalled.")
