"""Entry point: ``shoal <command>``. Each command lives in its own module under ``shoal.cli``."""

from __future__ import annotations

import importlib
import logging

import click

from shoal import __version__

# command name -> "module:attribute"; modules are imported only when their command runs, so
# ``shoal agent`` never pays for the Kubernetes client and the Helm engine.
COMMANDS: dict[str, str] = {
    "agent": "shoal.cli.agent:agent",
    "scheduler": "shoal.cli.scheduler:scheduler",
    "webhook": "shoal.cli.webhook:webhook",
    "node-config": "shoal.cli.nodeconfig:node_config",
    "node-ready": "shoal.cli.nodeready:node_ready",
    "demo": "shoal.cli.demo:demo",
    "preheat": "shoal.cli.preheat:preheat",
    "status": "shoal.cli.status:status",
    "install": "shoal.cli.install:install",
    "upgrade": "shoal.cli.install:upgrade",
    "uninstall": "shoal.cli.install:uninstall",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        command = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="shoal")
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Logging verbosity.",
)
@click.option(
    "--log-format",
    default="text",
    show_default=True,
    envvar="SHOAL_LOG_FORMAT",
    type=click.Choice(["text", "json"]),
    help="text: one line per record; json: one JSON object per record (for log pipelines).",
)
def cli(log_level: str, log_format: str) -> None:
    """Shoal: peer-to-peer container image distribution for Kubernetes."""
    handler = logging.StreamHandler()
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s", rename_fields={"levelname": "level"})
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=log_level.upper(), handlers=[handler])


def main() -> None:
    cli()
