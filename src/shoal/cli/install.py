"""``shoal install|upgrade|uninstall``: the brief's ``onectl addon`` workflow on the Helm engine.

The chart is rendered and released by Helm's own Go library (``helm-python-sdk``), so values,
``--set`` syntax, the schema check and release storage behave exactly as with ``helm``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
import yaml

RELEASE = "shoal"
NAMESPACE = "shoal-system"
_REPO_CHART = Path(__file__).resolve().parents[3] / "deploy" / "charts" / "shoal"


def default_chart() -> Path:
    """``$SHOAL_CHART`` (set in the image), else the chart in this source tree."""
    return Path(os.environ.get("SHOAL_CHART") or _REPO_CHART)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def build_values(values_files: tuple[str, ...] = (), sets: tuple[str, ...] = ()) -> dict[str, Any]:
    """Values from ``-f`` files then ``--set`` expressions, later ones winning (as in Helm)."""
    import helm_python

    values: dict[str, Any] = {}
    for path in values_files:
        values = deep_merge(values, helm_python.values_from_yaml(Path(path).read_text()))
    for expression in sets:
        values = deep_merge(values, helm_python.parse_set_string(expression))
    return values


def render(
    values: dict[str, Any],
    *,
    chart: Path | None = None,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    upgrade: bool = False,
) -> dict[str, str]:
    """Render offline (no cluster); the chart's schema is enforced by the engine."""
    import helm_python

    with helm_python.Chart.load(chart or default_chart()) as loaded:
        return loaded.render(
            values,
            name=release,
            namespace=namespace,
            is_install=not upgrade,
            is_upgrade=upgrade,
        )


def manifest_documents(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Kubernetes objects from rendered templates, in template order, without NOTES."""
    docs: list[dict[str, Any]] = []
    for name in sorted(rendered):
        if name.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(rendered[name]) if isinstance(d, dict))
    return docs


def manifests_text(rendered: dict[str, str]) -> str:
    parts = []
    for name in sorted(rendered):
        body = rendered[name].strip()
        if name.endswith("NOTES.txt") or not body:
            continue
        parts.append(f"# Source: {name}\n{body.removeprefix('---').strip()}")
    return "---\n" + "\n---\n".join(parts) + "\n"


def _config(kubeconfig: str | None, context: str | None, namespace: str) -> Any:
    import helm_python

    return helm_python.Config(kubeconfig_path=kubeconfig, kube_context=context, namespace=namespace)


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
    func = click.option("--dry-run", is_flag=True, help="Print the manifests; touch no cluster.")(func)
    func = click.option("--timeout", default=300, show_default=True, help="Seconds to wait.")(func)
    return func


def _helm_call(action: str, call: Any) -> Any:
    import helm_python

    try:
        return call()
    except helm_python.HelmError as exc:
        raise click.ClickException(f"{action} failed: {exc}") from None


def _release_version(release: Any) -> str:
    chart = (release or {}).get("chart") or {}
    meta = chart.get("metadata") if isinstance(chart, dict) else None
    if isinstance(meta, dict) and meta.get("version"):
        return str(meta["version"])
    return str((release or {}).get("version", "?"))


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
    values = _helm_call("reading values", lambda: build_values(values_files, sets))
    chart_path = Path(chart) if chart else default_chart()
    rendered = _helm_call(
        "rendering",
        lambda: render(values, chart=chart_path, release=release_name, namespace=namespace),
    )
    if dry_run:
        click.echo(manifests_text(rendered), nl=False)
        return
    config = _config(kubeconfig, kube_context, namespace)
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
    click.echo(f"Addon {release_name}, version {_release_version(release)} installed.")


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
    ``onectl addon upgrade``. With ``--dry-run`` the chart defaults plus the given values are
    rendered offline.
    """
    values = _helm_call("reading values", lambda: build_values(values_files, sets))
    chart_path = Path(chart) if chart else default_chart()
    if dry_run:
        rendered = _helm_call(
            "rendering",
            lambda: render(values, chart=chart_path, release=release_name, namespace=namespace, upgrade=True),
        )
        click.echo(manifests_text(rendered), nl=False)
        return
    config = _config(kubeconfig, kube_context, namespace)
    release = _helm_call(
        "upgrade",
        lambda: config.upgrade(
            str(chart_path),
            release_name,
            values,
            namespace=namespace,
            timeout=timeout,
            wait="watcher",
            reuse_values=not reset_values,
            reset_values=reset_values,
        ),
    )
    click.echo(f"Addon {release_name}, version {_release_version(release)} upgraded.")


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
    config = _config(kubeconfig, kube_context, namespace)
    _helm_call("uninstall", lambda: config.uninstall(release_name, timeout=timeout))
    click.echo(f"Addon {release_name} uninstalled.")
