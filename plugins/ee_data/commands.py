"""``ee data``: write the embedded datasets as image folders."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("data")
def data_group() -> None:
    """Write embedded datasets as image folders that `ee produce --data` reads."""


@data_group.command("digits")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--train-per-class",
    type=click.IntRange(1),
    default=50,
    show_default=True,
    help="Training images per class (VIPriors: 50).",
)
@click.option(
    "--val-per-class",
    type=click.IntRange(0),
    default=50,
    show_default=True,
    help="Validation images per class (VIPriors: 50); the rest become the test split.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the stratified split."
)
@click.option(
    "--size",
    type=click.IntRange(8),
    default=32,
    show_default=True,
    help="Side of the upscaled PNG images in pixels.",
)
@click.option("--force", is_flag=True, help="Rewrite a digits tree written with other parameters.")
def digits_command(
    directory: Path, train_per_class: int, val_per_class: int, seed: int, size: int, force: bool
) -> None:
    """Write scikit-learn's digits into DIRECTORY in the VIPriors layout.

    \b
    DIRECTORY/train/<class>/*.png   labelled training images
    DIRECTORY/val/<class>/*.png     labelled validation images
    DIRECTORY/test/imgs/*.png       unlabelled test images
    DIRECTORY/test/labels.csv       their labels, for evaluation only
    """
    from .digits import write_digits

    summary = write_digits(
        directory,
        train_per_class=train_per_class,
        val_per_class=val_per_class,
        seed=seed,
        size=size,
        force=force,
    )
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
    state = "wrote" if summary["written"] else "already up to date:"
    click.echo(f"{state} {directory} ({len(summary['classes'])} classes; {counts})")
