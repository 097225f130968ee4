"""``ee produce --nproc N``: the same command again under torchrun, and what its ranks share.

``torchrun_command`` rebuilds the command line from the options the user gave (so it works from
click's test runner too), leaving out the launcher's own options; ``launch_torchrun`` runs it
and stops torchrun's processes on an interrupt; ``open_shared_store`` lets every rank open a
store that one of them may be creating at that moment.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from ..errors import StoreError
from ..producer import StoreOnFirstUse

if TYPE_CHECKING:
    from ..store import PredictionStore

# Options of the launching process that its torchrun copies must not see again.
_LAUNCH_OPTIONS = ("nproc", "dist_backend")
BACKEND_ENV = "EE_DIST_BACKEND"  # read by producers under torchrun
STOP_WAIT_S = 30  # for torchrun to stop its processes after an interrupt
OPEN_TRIES = 20  # under torchrun: every rank opens (perhaps creates) the store at once


def under_torchrun() -> bool:
    """Whether this process is one of torchrun's (it sets WORLD_SIZE, RANK, LOCAL_RANK)."""
    return "WORLD_SIZE" in os.environ


def torchrun_command(ctx: click.Context, nproc: int) -> list[str]:
    """This command again under torchrun with ``nproc`` processes, the options given on the
    command line as they were given (``--nproc`` and ``--dist-backend`` left out). torchrun
    runs through ``commands.torchrun``, which ends a rank's user error as ``ee`` does."""
    command = [
        sys.executable, "-m", "ensemble_engine.commands.torchrun", "--standalone",
        f"--nproc_per_node={nproc}", "-m", "ensemble_engine",
    ]  # fmt: skip
    if ctx.find_root().params.get("debug"):
        command.append("--debug")
    command.append(ctx.info_name or "produce")
    given = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    for param in ctx.command.params:
        name = param.name or ""
        if name not in _LAUNCH_OPTIONS and ctx.get_parameter_source(name) in given:
            command += _as_arguments(param, ctx.params[name])
    return command


def _as_arguments(param: click.Parameter, value: Any) -> list[str]:
    """The command-line words that give ``param`` the value ``value``."""
    if isinstance(param, click.Argument):
        return [str(value)]
    assert isinstance(param, click.Option)
    flag = next(o for o in param.opts if o.startswith("--"))
    if param.is_flag:
        if param.secondary_opts:  # --x/--no-x
            return [flag if value else param.secondary_opts[0]]
        return [flag] if value else []
    if param.multiple:
        return [word for item in value for word in (flag, str(item))]
    return [flag, str(value)]


def launch_torchrun(ctx: click.Context, nproc: int, backend: str | None) -> int:
    """Run the command under torchrun; its exit code (torchrun stops every process on error)."""
    command = torchrun_command(ctx, nproc)
    env = dict(os.environ)
    if backend:
        env[BACKEND_ENV] = backend
    click.echo(f"running {nproc} processes: {shlex.join(['python', *command[1:]])}", err=True)
    torchrun = subprocess.Popen(command, env=env)
    try:
        return torchrun.wait()
    except KeyboardInterrupt:
        # torchrun stops its processes on SIGTERM; killed outright, it would leave them running
        torchrun.terminate()
        try:
            torchrun.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            torchrun.kill()
        raise


def open_store_for_producer(path: str) -> PredictionStore | StoreOnFirstUse:
    """The store at ``path`` opened now (a damaged or newer store fails here, before any work
    or launch), or, where none exists yet, one that is created when the producer first uses
    it, so that a command refused for its recipe or data leaves nothing behind."""
    from ..location import store_exists, store_location

    if store_exists(path):
        return open_shared_store(path)
    return StoreOnFirstUse(store_location(path), open_shared_store)


def open_shared_store(path: str) -> PredictionStore:
    """``open_store(path, "a")``; under torchrun, retried while another rank is creating it
    (its root metadata may be half written for a moment)."""
    from ..store import open_store

    for _ in range(OPEN_TRIES - 1 if under_torchrun() else 0):
        try:
            return open_store(path, mode="a")
        except StoreError:
            time.sleep(0.25)
    return open_store(path, mode="a")
