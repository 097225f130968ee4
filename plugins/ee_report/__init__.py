"""Built-in plugin ee_report: ``ee report STORE``, one self-contained HTML page about a store.

The page shows producer top-1 per test size, how alike producers fail, per-class accuracy before
and after coverage, and the fusion graph with each node's score, with tables of the same
numbers. Importing this module stays cheap: matplotlib loads only when the command runs.
"""

from __future__ import annotations

from pathlib import Path

import click

from ensemble_engine import hookimpl


@click.command("report")
@click.argument("store")
@click.option(
    "--graph",
    default=None,
    help="Graph file or shipped graph name; only orders the nodes and marks the output.",
)
@click.option(
    "--split",
    "splits",
    multiple=True,
    help="Labelled split to score (repeatable; the first one drives agreement and coverage). "
    "Default: the labelled splits holding predictions, val then test.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    default=Path("report.html"),
    show_default=True,
    help="Where to write the HTML page ('-': stdout).",
)
def report_command(store: str, graph: str | None, splits: tuple[str, ...], output: Path) -> None:
    """Write an HTML report of STORE: scores, error agreement, coverage, the fusion graph."""
    from ensemble_engine import open_store

    from .report import build_report, write_report

    report = build_report(open_store(store, "r"), graph=graph, splits=splits or None)
    path = write_report(report, output)
    to_stdout = str(output) == "-"  # the page is stdout: what is said about it goes to stderr
    if not to_stdout:
        click.echo(str(path))
    click.echo(report.summary, err=to_stdout)


@click.command("frontier")
@click.argument("store")
@click.option("--split", default="val", show_default=True, help="Labelled split to score.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def frontier_command(store: str, split: str, as_json: bool) -> None:
    """The accuracy–cost Pareto frontier of STORE's predictions on a split (top-1 vs GFLOPs)."""
    import json

    from rich.console import Console
    from rich.table import Table

    from ensemble_engine import open_store

    from .frontier import store_frontier

    st = open_store(store, "r")
    st.split_header(split)  # an unknown split is a one-line error
    result = store_frontier(st, split)
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2))
        return
    table = Table("prediction", "top-1", "GFLOPs", "frontier", title=f"accuracy–cost on {split}")
    for point in result.points:
        mark = "●" if result.on_frontier(point) else ""
        table.add_row(point.name, f"{point.top1:.4f}", f"{point.gflops:.4g}", mark)
    console = Console()
    if result.points:
        console.print(table)
    else:
        console.print(f"no prediction on {split} has both a top-1 and a known cost")
    if result.unknown:
        console.print("cost unknown: " + ", ".join(result.unknown), soft_wrap=True)
    if result.unscored:
        console.print(f"no top-1 on {split}: " + ", ".join(result.unscored), soft_wrap=True)


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(report_command)
    cli.add_command(frontier_command)
