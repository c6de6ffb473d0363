"""``shoal node-ready``: take the node's startup taint away once its agent is ready."""

from __future__ import annotations

import time

import click

from shoal.cli.runtime import run, run_until_signalled

DEFAULT_AGENT = "127.0.0.1:65001"


@click.command("node-ready")
@click.option("--node", "node_name", envvar="NODE_NAME", required=True, help="This node's name (env NODE_NAME).")
@click.option("--taint", "taint_key", required=True, help="Key of the startup taint to remove.")
@click.option("--agent", default=DEFAULT_AGENT, show_default=True, help="HOST:PORT of the node's agent.")
@click.option("--interval", type=click.FloatRange(min=0.05), default=2.0, show_default=True)
@click.option("--kubeconfig", type=click.Path(dir_okay=False), help="Outside a cluster: a kubeconfig.")
@click.option("--hold/--exit", default=True, show_default=True, help="Keep running afterwards (a Pod's container).")
def node_ready(node_name: str, taint_key: str, agent: str, interval: float, kubeconfig: str | None, hold: bool) -> None:
    """Wait until the agent answers, then remove the startup taint from this node.

    Runs beside the agent, after node-config (its init container) wrote the runtime's
    mirror configuration, so a Pod scheduled after the taint is gone pulls through the agent.
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from shoal.cli.kube import load_kube_config
    from shoal.nodeconfig.ready import remove_taint, wait_for_agent

    load_kube_config(kubeconfig, fall_back_to_default=False)
    wait_for_agent(agent, interval=interval)
    api = client.CoreV1Api()
    while True:
        try:
            removed = remove_taint(api, node_name, taint_key)
            break
        except ApiException as exc:
            click.echo(f"removing taint {taint_key} from {node_name} failed: {exc.status} {exc.reason}", err=True)
            time.sleep(interval)
    click.echo(f"{'removed' if removed else 'no'} taint {taint_key} on node {node_name}")
    if hold:
        run(run_until_signalled())
