"""``shoal webhook``: the admission webhook plus the pull-secret controller, in one process."""

from __future__ import annotations

from pathlib import Path

import click

from shoal.webhook.certreload import RELOAD_INTERVAL, CertReloader
from shoal.webhook.config import (
    DEFAULT_LABEL_PREFIX,
    DEFAULT_P2P_PORT,
    DEFAULT_SECRET_PREFIX,
    DEFAULT_SECRET_SUFFIX,
    ConfigError,
    WebhookConfig,
)


def _split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise click.BadParameter(f"{listen!r}: want HOST:PORT", param_hint="--listen")
    return host.strip("[]") or "0.0.0.0", int(port)


@click.command()
@click.option("--listen", default="0.0.0.0:8443", show_default=True, help="HOST:PORT to serve.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="PEM certificate.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="PEM private key.")
@click.option(
    "--registry",
    "registries",
    multiple=True,
    required=True,
    metavar="HOST",
    help="Registry to accelerate (repeatable).",
)
@click.option(
    "--p2p-port",
    type=int,
    default=DEFAULT_P2P_PORT,
    show_default=True,
    help="Port of the alias hosts images are rewritten to: <registry host>[.<alias domain>]:<port>.",
)
@click.option("--alias-domain", default="", help="DNS suffix of the alias hosts (as given to node-config).")
@click.option(
    "--rewrite-without-pull-secret",
    is_flag=True,
    help="Also rewrite images whose registry credentials are not in the Pod's pull secrets "
    "(public registries, or node credentials that cover the alias hosts too).",
)
@click.option(
    "--label-prefix",
    default=DEFAULT_LABEL_PREFIX,
    show_default=True,
    help="Prefix of the image-accelerate-mode label and the annotations.",
)
@click.option("--secret-prefix", default=DEFAULT_SECRET_PREFIX, show_default=True)
@click.option("--secret-suffix", default=DEFAULT_SECRET_SUFFIX, show_default=True)
@click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False),
    default=None,
    help="Outside a cluster: kubeconfig for the Secret controller.",
)
@click.option("--insecure", is_flag=True, help="Serve plain HTTP (tests and local runs only).")
@click.option(
    "--cert-reload-interval",
    type=click.FloatRange(min=0.1),
    default=RELOAD_INTERVAL,
    show_default=True,
    help="Seconds between checks of the certificate files (renewals are served without a restart).",
)
def webhook(
    listen: str,
    tls_cert: str | None,
    tls_key: str | None,
    registries: tuple[str, ...],
    p2p_port: int,
    alias_domain: str,
    rewrite_without_pull_secret: bool,
    label_prefix: str,
    secret_prefix: str,
    secret_suffix: str,
    kubeconfig: str | None,
    insecure: bool,
    cert_reload_interval: float,
) -> None:
    """Rewrite images of accelerated registries in Pods to their P2P alias hosts."""
    from aiohttp import web
    from kubernetes import client

    from shoal.cli.kube import load_kube_config
    from shoal.webhook.controller import SecretSync
    from shoal.webhook.metrics import WebhookMetrics
    from shoal.webhook.server import create_app, tls_context

    try:
        config = WebhookConfig.build(
            list(registries),
            p2p_port=p2p_port,
            alias_domain=alias_domain,
            rewrite_without_pull_secret=rewrite_without_pull_secret,
            label_prefix=label_prefix,
            secret_prefix=secret_prefix,
            secret_suffix=secret_suffix,
        )
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if not insecure and not (tls_cert and tls_key):
        raise click.UsageError("--tls-cert and --tls-key are required (the API server speaks HTTPS)")
    host, port = _split_listen(listen)
    load_kube_config(kubeconfig)
    sync = SecretSync(client.CoreV1Api(), config)
    metrics = WebhookMetrics()
    sync.on_error = metrics.secret_sync_errors.labels("controller").inc
    sync.start()
    app = create_app(config, webhook_metrics=metrics)
    ssl_context = None
    if not insecure:
        ssl_context = tls_context(str(tls_cert), str(tls_key))
        reloader = CertReloader(ssl_context, Path(str(tls_cert)), Path(str(tls_key)), interval=cert_reload_interval)
        app.cleanup_ctx.append(reloader.cleanup_ctx)
    try:
        web.run_app(
            app,
            host=host,
            port=port,
            ssl_context=ssl_context,
            print=None,
            access_log=None,
        )
    finally:
        sync.stop()
