"""``ee plugins``: what is installed and what each plugin registers."""

from __future__ import annotations

import json
from dataclasses import asdict

import click
from rich.console import Console
from rich.table import Table

from ..plugins import get_host


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_command(as_json: bool) -> None:
    """List loaded plugins, their versions and what each registers.

    Third-party plugins load from the `ensemble_engine` entry-point group; set EE_PLUGINS to a
    comma-separated allowlist (empty: built-ins only).
    """
    infos = get_host().plugin_infos()
    if as_json:
        click.echo(json.dumps([asdict(i) for i in infos], indent=2))
        return
    table = Table("plugin", "version", "built-in", "registers")
    for info in infos:
        regs = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(info.registers.items()))
        table.add_row(info.name, info.version, "yes" if info.builtin else "no", regs)
    Console().print(table)
