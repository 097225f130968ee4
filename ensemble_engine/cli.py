"""The ``ee`` command line: a click app built in a function, thin over the Python API.

Errors a user can cause (``EEError``) print one line on stderr and exit with code 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version

import click

from .errors import EEError


def _version() -> str:
    try:
        return version("ensemble-engine")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


class UserError(click.ClickException):
    """A one-line user error with exit code 2."""

    exit_code = 2


class EEGroup(click.Group):
    """Turns the project's own errors into one-line messages."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EEError as exc:
            if (ctx.obj or {}).get("debug"):
                raise
            raise UserError(str(exc)) from None


def build_cli() -> click.Group:
    """Build the app: core commands, then every plugin's ``register_commands``."""
    from .commands.info import plugins_command
    from .commands.io import export_command, import_command
    from .commands.store import ls_command, store_group, validate_command
    from .plugins import get_host

    @click.group(cls=EEGroup, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(_version(), "--version", prog_name="ee")
    @click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
    @click.pass_context
    def cli(ctx: click.Context, debug: bool) -> None:
        """ensemble-engine: train many models, store their predictions, fuse them in stages.

        \b
        Quick start:
          ee demo                      the whole pipeline on the embedded digits data
          ee produce resnet18-taylor   train a backbone with a loss, predict into ./ee.zarr
          ee combine vipriors2021      fuse the stored predictions with the seed graph
          ee ls ee.zarr                see what the store holds
        """
        ctx.ensure_object(dict)
        ctx.obj["debug"] = debug

    for command in (
        plugins_command,
        ls_command,
        validate_command,
        import_command,
        export_command,
        store_group,
    ):
        cli.add_command(command)
    for module, name in (
        ("produce", "produce_command"),
        ("produce", "recipes_command"),
        ("combine", "combine_command"),
        ("combine", "graphs_command"),
    ):
        command = _optional_command(module, name)
        if command is not None:
            cli.add_command(command)
    get_host().add_commands(cli)
    return cli


def _optional_command(module: str, name: str) -> click.Command | None:
    import importlib

    try:
        mod = importlib.import_module(f"ensemble_engine.commands.{module}")
    except ModuleNotFoundError as exc:
        if exc.name == f"ensemble_engine.commands.{module}":
            return None
        raise
    return getattr(mod, name, None)


def main() -> None:
    try:
        cli = build_cli()
    except EEError as exc:  # a broken plugin installation
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    cli(prog_name="ee")


if __name__ == "__main__":  # pragma: no cover
    main()
