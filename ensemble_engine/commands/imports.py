"""``ee import``: predictions made elsewhere into the store."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import StoreError
from ..import_facts import import_cost, parse_facts, read_class_list
from ..readers import (
    VIEW_MERGES,
    align_rows,
    check_float16_range,
    check_labels,
    check_probs,
    merge_view_arrays,
    read_npy,
    read_npz_views,
    read_timm_csv,
)
from ..store import open_store


@click.command("import")
@click.argument("store")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--split", required=True, help="The store split the rows belong to.")
@click.option("--id", "name", required=True, help="Prediction name to write (e.g. my-model-s320).")
@click.option(
    "--kind",
    type=click.Choice(["logits", "probs"]),
    default=None,
    help="What the scores are (default: logits for .npy, from the columns for CSV).",
)
@click.option(
    "--merge",
    type=click.Choice(list(VIEW_MERGES)),
    default="mean_logits",
    show_default=True,
    help="How the views of an .npz become one prediction (mean_probs stores probs).",
)
@click.option(
    "--dtype",
    type=click.Choice(["float16", "float32"]),
    default="float16",
    show_default=True,
    help="How the scores are stored: float16 halves the size; float32 holds scores beyond "
    "±65504 and full float32 precision.",
)
@click.option(
    "--fact",
    "facts",
    multiple=True,
    metavar="KEY=VALUE",
    help="Record a fact a graph's where: selects on (repeatable), e.g. loss=ce, test_size=224; "
    "the value is read as a YAML scalar. gflops=, params=, images_per_s= and views= record "
    "the inference cost per image (the cost attr); without them the cost is unknown.",
)
@click.option(
    "--classes",
    "classes_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A specialist's class space: one store class id per line, optionally ending with "
    "__other__; the file's columns are these classes, in this order.",
)
@click.option("--force", is_flag=True, help="Replace an existing prediction of that name.")
def import_command(
    store: str,
    file: Path,
    split: str,
    name: str,
    kind: str | None,
    merge: str,
    dtype: str,
    facts: tuple[str, ...],
    classes_file: Path | None,
    force: bool,
) -> None:
    """Import FILE as prediction NAME/SPLIT into STORE.

    FILE is a .npy array [N, C] in the split's row order (a 1-D integer array imports labels),
    the CSV of timm's inference.py with full class columns, matched to samples by file name, or
    an .npz of test-time views: one logits array [N, C] per view, named after it (identity,
    hflip, ...), plus an optional 1-D text array sample_id naming each row's sample (else rows
    are in the split's order). The views are merged with --merge, as `ee produce` merges its
    own, and their names are recorded as the prediction's tta. Probabilities (--kind probs or
    prob_ columns) must lie in [0, 1] and sum to 1 per row (within 0.01).

    --fact KEY=VALUE records what a graph's where: selects on (the shipped vipriors2021 graph
    groups by loss and test_size, and leaves names starting cov- to its coverage node). Values
    are YAML scalars: test_size=224 is a number, as `ee produce` writes it; quote to keep text.
    backbone, loss and run are text, test_size and seed whole numbers, and a loss alias is
    recorded under its registered name (taylor: taylor_ce; see `ee recipes`). Lists, mappings
    and keys the store writes itself (kind, split, classes, source, inputs, ...) are refused.

    --classes FILE imports a specialist for the coverage combiner: the columns are the listed
    classes, a subset of the store's optionally ending with __other__. Predictions sharing a
    run fact are one specialist model (its test sizes averaged); without one, each is its own.

    \b
    Examples:
      python -c "import numpy as n; n.savez('v.npz', identity=a, hflip=b)"
      ee import ee.zarr v.npz --split val --id mynet-s320 --merge gmean
      ee import ee.zarr val.npy --split val --id mynet-ce-s224 \\
          --fact backbone=mynet --fact loss=ce --fact test_size=224
      printf '3\\n5\\n8\\n__other__\\n' > cov.txt
      ee import ee.zarr cov.npy --split val --id cov-mynet-s224 --classes cov.txt \\
          --fact run=cov-mynet --fact test_size=224
    """
    open_store(store, "r")  # a missing store is an error here, not a new empty store
    st = open_store(store, "a")
    sp = st.split(split)
    fact_values, notes = parse_facts(facts)
    kept_facts, cost = import_cost(fact_values, name)
    classes = read_class_list(classes_file, st.classes) if classes_file else None
    k = len(classes or st.classes)
    space = f"{classes_file.name}'s" if classes_file else "the store's"
    params: dict = {"file": file.name}
    if kept_facts:
        params["facts"] = list(kept_facts)  # which attrs the user gave, for readers and ls
    if classes_file:
        params["classes_file"] = classes_file.name
    meta = {**kept_facts, "source": {"type": "import", "plugin": "ee", "params": params}}
    if cost is not None:
        meta["cost"] = cost  # from --fact gflops=, params=, images_per_s=, views=
    if file.suffix.lower() == ".npy":
        data = read_npy(file)
        if data.ndim == 1:
            check_labels(data, file.name, split, sp.n, k, space)
            st.write_prediction(
                name, split, kind="labels", labels=data, meta=meta, classes=classes, replace=force
            )
            _echo_notes(notes)
            click.echo(f"imported labels {name}/{split} ({len(data)} rows)")
            return
        if data.ndim != 2 or data.shape != (sp.n, k):
            raise StoreError(
                f"{file.name} has shape {list(data.shape)}, split {split!r} needs "
                f"[{sp.n}, {k}]" + _width_note(classes_file, k)
            )
        scores, kind = data, kind or "logits"
        if kind == "probs":
            check_probs(scores, file.name)
    elif file.suffix.lower() == ".csv":
        names, scores, csv_kind = read_timm_csv(file)
        if scores.shape[1] != k:
            raise StoreError(
                f"{file.name} has {scores.shape[1]} class columns for {k} classes"
                + _width_note(classes_file, k)
            )
        kind = kind or csv_kind
        if kind == "probs":
            check_probs(scores, file.name, names)
        scores = scores[align_rows(names, sp.sample_ids)]
    elif file.suffix.lower() == ".npz":
        if kind == "probs":
            raise StoreError(f"{file.name}: .npz views must be logits; drop --kind probs")
        labels, views, ids = read_npz_views(file)
        if views.shape[2] != k or (ids is None and views.shape[1] != sp.n):
            raise StoreError(
                f"{file.name} holds views of shape {list(views.shape[1:])}, split {split!r} "
                f"needs [{sp.n}, {k}]" + _width_note(classes_file, k)
            )
        if ids is not None:
            views = views[:, align_rows(ids, sp.sample_ids)]
        scores, kind = merge_view_arrays(views, merge), VIEW_MERGES[merge]
        meta.update({"tta": labels, "merge": merge})
    else:
        raise StoreError(
            f"cannot import {file.name}: use a .npy array, an .npz of views or a timm inference CSV"
        )
    if dtype == "float16":
        check_float16_range(scores, file.name)
    pred = st.write_prediction(
        name, split, kind=kind, scores=scores, meta=meta, classes=classes, dtype=dtype,
        replace=force,
    )  # fmt: skip
    top1 = pred.metrics.get("top1")
    _echo_notes(notes)
    click.echo(
        f"imported {pred.id} ({kind}, {sp.n}×{k})"
        + (f", top1 {top1:.4f}" if top1 is not None else "")
        + (f", facts {', '.join(f'{a}={v}' for a, v in fact_values.items())}" if facts else "")
    )


def _width_note(classes_file: Path | None, k: int) -> str:
    """The fix for a width mismatch: which class list the columns must follow."""
    if classes_file is not None:
        return f" ({classes_file.name} lists {k} classes); give one column per listed class"
    return "; give one column per store class, or a specialist's with --classes FILE"


def _echo_notes(notes: list[str]) -> None:
    for note in notes:
        click.echo(f"note: {note}")
