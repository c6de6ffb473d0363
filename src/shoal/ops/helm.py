"""Shoal's chart on Helm's own engine (``helm-python-sdk``): values, rendering, NOTES, releases.

Values, ``--set`` syntax, the schema check and release storage behave exactly as with
``helm``. The ``shoal install|upgrade|uninstall`` commands are thin wrappers over this module.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

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


def helm_config(kubeconfig: str | None, context: str | None, namespace: str) -> Any:
    """Helm's action configuration for a cluster (nothing is contacted until an action runs)."""
    import helm_python

    return helm_python.Config(kubeconfig_path=kubeconfig, kube_context=context, namespace=namespace)


class ReleaseValuesError(RuntimeError):
    """The installed release's values could not be read; the message says why, in words."""


_UNREACHABLE = re.compile(r'Get "(?P<url>[a-z]+://[^/"]+)[^"]*": (?:.*: )?(?P<cause>[^:]+)$')
_NO_KUBECONFIG = re.compile(r"stat (?P<path>.+): no such file or directory$")


def unreachable_cluster(message: str) -> str:
    """Helm's "kubernetes cluster unreachable: ..." as "no cluster reachable at URL (cause)"."""
    detail = message.removeprefix("kubernetes cluster unreachable:").strip()
    if match := _UNREACHABLE.search(detail):
        return f"no cluster reachable at {match['url']} ({match['cause'].strip()})"
    if match := _NO_KUBECONFIG.search(detail):
        return f"no cluster reachable: kubeconfig {match['path']} does not exist"
    return f"no cluster reachable ({detail})"


def release_values(config: Any, release: str, namespace: str) -> dict[str, Any]:
    """The values given to the installed ``release`` (``helm get values``), as ``--reuse-values`` keeps them.

    Raises:
        ReleaseValuesError: no cluster reachable, or no such release in ``namespace``.
    """
    import helm_python

    try:
        values = config.get_values(release)
    except helm_python.HelmNotFoundError:
        raise ReleaseValuesError(f"release {release} is not installed in namespace {namespace}") from None
    except helm_python.HelmKubeError as exc:
        raise ReleaseValuesError(unreachable_cluster(str(exc))) from None
    return dict(values or {})


def notes(rendered: dict[str, str]) -> str:
    """The chart's rendered NOTES.txt (what Helm prints after an install), or ``""``."""
    return next((body.strip() for name, body in sorted(rendered.items()) if name.endswith("NOTES.txt")), "")


def as_comment(text: str) -> str:
    """``text`` as YAML comment lines, so it can follow manifests that are piped to kubectl."""
    return "".join(f"# {line}".rstrip() + "\n" for line in text.splitlines())


def release_notes(release: Any) -> str:
    """The NOTES Helm rendered for a release it installed or upgraded."""
    return str((release or {}).get("notes") or "").strip()


def release_version(release: Any) -> str:
    chart = (release or {}).get("chart") or {}
    meta = chart.get("metadata") if isinstance(chart, dict) else None
    if isinstance(meta, dict) and meta.get("version"):
        return str(meta["version"])
    return str((release or {}).get("chart_version") or (release or {}).get("version", "?"))
