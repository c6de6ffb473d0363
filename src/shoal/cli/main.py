"""Entry point: ``shoal <command>``. Each command lives in its own module under ``shoal.cli``.

:class:`LazyGroup` is also the boundary where failures become words (``shoal.cli.errors``).
"""

from __future__ import annotations

import importlib
import logging

import click

from shoal import __version__
from shoal.cli.errors import as_failure, clean_help, json_failure, short_help

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


DEBUG = "shoal.debug"
JSON = "shoal.json"


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
        command.help = clean_help(command.help)
        if command.help and command.short_help is None:
            command.short_help = short_help(command.help)
        for param in command.params:
            if isinstance(param, click.Option):
                param.help = clean_help(param.help)
        return command

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        takes_json = command is not None and any("--json" in getattr(p, "opts", ()) for p in command.params)
        ctx.meta[JSON] = takes_json and "--json" in rest
        return name, command, rest

    def invoke(self, ctx: click.Context) -> object:
        """Run the command; what escapes it becomes one or two lines (exit 1, usage: 2),
        or one JSON document when the command was given ``--json``."""
        try:
            try:
                return super().invoke(ctx)
            except (click.exceptions.Exit, click.Abort, click.ClickException):
                raise
            except Exception as exc:
                if ctx.params.get("debug"):
                    raise
                raise as_failure(exc) from None
        except click.ClickException as exc:
            if not ctx.meta.get(JSON):
                raise
            click.echo(json_failure(exc))
            exc.show()
            ctx.exit(exc.exit_code)


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
@click.option(
    "--debug",
    is_flag=True,
    envvar="SHOAL_DEBUG",
    help="Show the Python traceback of a failure (for bug reports).",
)
def cli(log_level: str, log_format: str, debug: bool) -> None:
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
