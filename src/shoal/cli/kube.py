"""Finding the Kubernetes API for ``shoal webhook`` and ``shoal node-ready``, with a message a
person can act on when there is none (outside a cluster, no kubeconfig)."""

from __future__ import annotations

import os
from typing import Any

import click


def load_kube_config(kubeconfig: str | None, *, fall_back_to_default: bool = True) -> None:
    """``--kubeconfig`` when given; else the Pod's service account; else (when
    ``fall_back_to_default``) ``$KUBECONFIG`` or ``~/.kube/config``."""
    from kubernetes import config as _kube_config

    kube_config: Any = _kube_config  # the client library ships no type hints
    if kubeconfig:
        try:
            kube_config.load_kube_config(config_file=kubeconfig)
        except kube_config.ConfigException as exc:
            raise click.BadParameter(
                f"{kubeconfig}: not a usable kubeconfig ({exc})", param_hint="--kubeconfig"
            ) from None
        except Exception:  # the library fails on files of another shape with TypeError, AttributeError, ...
            raise click.BadParameter(
                f"{kubeconfig}: not a kubeconfig (want a YAML file with clusters, users and contexts)",
                param_hint="--kubeconfig",
            ) from None
        return
    try:
        kube_config.load_incluster_config()
        return
    except kube_config.ConfigException:
        if not fall_back_to_default:
            raise click.UsageError(
                "not running in a Kubernetes Pod (no service account token): pass --kubeconfig FILE"
            ) from None
    default = os.environ.get("KUBECONFIG") or "~/.kube/config"
    try:
        kube_config.load_kube_config()
    except Exception:  # ConfigException, or the library tripping over a malformed file
        raise click.UsageError(
            f"not running in a Kubernetes Pod and no usable kubeconfig at {default}: pass --kubeconfig FILE"
        ) from None
