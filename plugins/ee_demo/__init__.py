"""Built-in plugin ee_demo: ``ee demo``, the whole seed pipeline on the embedded digits data.

Importing this module stays cheap: torch, timm and the pipeline load only when the command runs.
"""

from __future__ import annotations

from pathlib import Path

import click

from ensemble_engine import hookimpl


@click.command("demo")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("ee-demo"),
    show_default=True,
    help="Where the data, the store, the run folders and the graph go.",
)
@click.option("--quick", is_flag=True, help="Fewer models and epochs (under a minute).")
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of every training run and TTA view.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Models trained at once (default: one per usable core).",
)
def demo_command(workdir: Path, quick: bool, seed: int, workers: int | None) -> None:
    """Run the seed's whole pipeline on the embedded digits, then print its tables.

    Trains backbones × losses, predicts each at three test sizes with TTA, fuses them with
    the seed graph (soft vote per loss × size, hard vote), trains specialists on the weak
    classes of the vote and lets them correct it; selects models within the cost of the best
    single one on val and prints accuracy against cost. Everything lands in WORKDIR as an
    ordinary store, run folders and graph file that the other commands read.
    """
    from .show import run_and_show

    run_and_show(workdir, quick=quick, seed=seed, workers=workers)


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(demo_command)
