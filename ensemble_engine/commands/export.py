"""``ee export``: a prediction out of the store as a VIPriors submission CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import click
import numpy as np

from ..errors import StoreError
from ..outputs import STDOUT, is_stdout, write_output
from ..store import open_store, parse_id


def submission_csv(sample_ids: np.ndarray, ranked: np.ndarray) -> str:
    """The VIPriors submission CSV: header ``Image IDs,Predictions``, one row per sample."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["Image IDs", "Predictions"])
    for sid, row in zip(sample_ids, ranked, strict=True):
        writer.writerow([sid.rsplit("/", 1)[-1], " ".join(str(int(c)) for c in row)])
    return out.getvalue()


@click.command("export")
@click.argument("store")
@click.argument("pred_id", metavar="ID")
@click.option(
    "--top-k",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Write the K best class indices per sample, space-separated.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    default=None,
    help="Write to this file instead of stdout ('-': stdout). A device or FIFO is written "
    "directly, a symlink's target is replaced whole.",
)
def export_command(store: str, pred_id: str, top_k: int, output: Path | None) -> None:
    """Export prediction ID (NAME/SPLIT, e.g. final/test) as a VIPriors submission CSV."""
    name, split = parse_id(pred_id)
    st = open_store(store, "r")
    pred = st.get(name, split)
    if st.classes_of(pred) != st.classes:
        raise StoreError(
            f"{pred.id} covers a class subset; export a full-space prediction "
            "(e.g. the coverage node's output)"
        )
    if pred.kind == "labels" and top_k > 1:
        raise StoreError(f"{pred.id} holds labels only; --top-k needs scores")
    if top_k > len(st.classes):
        raise StoreError(
            f"--top-k {top_k} is more than the {len(st.classes)} classes of {pred.id}; "
            f"use at most {len(st.classes)}"
        )
    data = st.read(name, split)
    if pred.kind == "labels":
        ranked = data[:, None]
    else:
        ranked = np.argsort(-data, axis=1, kind="stable")[:, :top_k]
    text = submission_csv(st.split(split).sample_ids, ranked)
    write_output(STDOUT if output is None else output, text)
    if not is_stdout(output):
        click.echo(f"wrote {output} ({len(ranked)} rows)", err=True)
