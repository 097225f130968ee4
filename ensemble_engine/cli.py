"""The ``ee`` command line: a click app built in a function, thin over the Python API.

Errors a user can cause (``EEError``) print one line on stderr and exit with code 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import errno
import gc
import sys
import warnings
from importlib.metadata import PackageNotFoundError, version

import click

from .errors import EEError
from .location import command_line_locations


def _version() -> str:
    try:
        return version("ensemble-engine")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


class UserError(click.ClickException):
    """A one-line user error with exit code 2."""

    exit_code = 2


def _usage_line(exc: click.UsageError) -> UserError:
    """click's usage error (usage, hint, blank line, message) as one line that names the help."""
    where = exc.ctx.command_path if exc.ctx is not None else "ee"
    return UserError(f"{' '.join(exc.format_message().split())} (see `{where} --help`)")


# What the machine refuses is not a bug in ee: every OSError that reaches the command line is
# one line naming the errno and the fix (writers delete what they had started, so nothing is
# half-written). ``--debug`` shows the traceback.
_FIXES = {
    errno.ENOSPC: "free some space and run the command again",
    errno.EDQUOT: "free some space (or raise the quota) and run the command again",
    errno.EFBIG: "the file size limit is reached: raise it (`ulimit -f unlimited`) or write "
    "somewhere without a limit",
    errno.EACCES: "check the permissions there, or use another path",
    errno.EPERM: "check the permissions there, or use another path",
    errno.EROFS: "check the permissions there, or use another path (the filesystem is read-only)",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "check the path",
    errno.EIO: "the device reported an I/O error: check the disk, then run the command again",
}


def _os_error_line(exc: OSError) -> UserError:
    where = f": {exc.filename}" if exc.filename else ""
    code = errno.errorcode.get(exc.errno or 0)
    what = f"{exc.strerror or exc}" + (f" ({code})" if code else "")
    fix = _FIXES.get(
        exc.errno or 0,
        "check the path and the disk, then run the command again (ee --debug "
        "shows where it failed)",
    )
    return UserError(f"{what}{where}; {fix}")


class EEGroup(click.Group):
    """Turns the project's own errors, click's usage errors and what the system refuses (a full
    disk, a file size limit, a refused write) into one-line messages."""

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _usage_line(exc) from None

    def invoke(self, ctx: click.Context):
        try:
            with command_line_locations():  # a memory:// store would end with the command
                return super().invoke(ctx)
        except click.UsageError as exc:
            raise _usage_line(exc) from None
        except EEError as exc:
            if (ctx.obj or {}).get("debug"):
                raise
            raise UserError(str(exc)) from None
        except OSError as exc:  # a full disk, a file size limit, a read-only folder, mid-write
            if (ctx.obj or {}).get("debug"):
                raise
            raise _os_error_line(exc) from None


def build_cli() -> click.Group:
    """Build the app: core commands, then every plugin's ``register_commands``."""
    from .commands.analysis import weak_classes_command
    from .commands.combine import combine_command, graphs_command
    from .commands.export import export_command
    from .commands.imports import import_command
    from .commands.info import plugins_command
    from .commands.produce import produce_command
    from .commands.store import ls_command, store_group, validate_command
    from .plugins import get_host

    @click.group("ee", cls=EEGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
        if not debug:  # a warning is one line, as an error is; --debug keeps Python's format
            warnings.formatwarning = _one_line_warning

    for command in (
        plugins_command,
        ls_command,
        validate_command,
        import_command,
        export_command,
        store_group,
        weak_classes_command,
        produce_command,
        combine_command,
        graphs_command,
    ):
        cli.add_command(command)
    get_host().add_commands(cli)
    return cli


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """``warning: MESSAGE`` instead of Python's ``file:line: Category: message`` plus the
    source line: the file and line are ee's internals, of no use to the user reading it."""
    return f"warning: {message}\n"


def main() -> None:
    try:
        cli = build_cli()
    except EEError as exc:  # a broken plugin installation
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    try:
        cli(prog_name="ee")
    finally:
        # What is alive now lives until the process ends: frozen, the interpreter's last
        # garbage collections skip it (torch and timm leave millions of objects; walking them
        # at exit took over a second of every command).
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    main()
