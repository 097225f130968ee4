"""``ee import``: predictions made elsewhere into the store."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import StoreError
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
@click.option("--force", is_flag=True, help="Replace an existing prediction of that name.")
def import_command(
    store: str,
    file: Path,
    split: str,
    name: str,
    kind: str | None,
    merge: str,
    dtype: str,
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

    \b
    Example:
      python -c "import numpy as n; n.savez('v.npz', identity=a, hflip=b)"
      ee import ee.zarr v.npz --split val --id mynet-s320 --merge gmean
    """
    open_store(store, "r")  # a missing store is an error here, not a new empty store
    st = open_store(store, "a")
    sp = st.split(split)
    meta = {"source": {"type": "import", "plugin": "ee", "params": {"file": file.name}}}
    if file.suffix.lower() == ".npy":
        data = read_npy(file)
        if data.ndim == 1:
            check_labels(data, file.name, split, sp.n, len(st.classes))
            st.write_prediction(name, split, kind="labels", labels=data, meta=meta, replace=force)
            click.echo(f"imported labels {name}/{split} ({len(data)} rows)")
            return
        if data.ndim != 2 or data.shape != (sp.n, len(st.classes)):
            raise StoreError(
                f"{file.name} has shape {list(data.shape)}, split {split!r} needs "
                f"[{sp.n}, {len(st.classes)}]"
            )
        scores, kind = data, kind or "logits"
        if kind == "probs":
            check_probs(scores, file.name)
    elif file.suffix.lower() == ".csv":
        names, scores, csv_kind = read_timm_csv(file)
        if scores.shape[1] != len(st.classes):
            raise StoreError(
                f"{file.name} has {scores.shape[1]} class columns, the store "
                f"{len(st.classes)} classes"
            )
        kind = kind or csv_kind
        if kind == "probs":
            check_probs(scores, file.name, names)
        scores = scores[align_rows(names, sp.sample_ids)]
    elif file.suffix.lower() == ".npz":
        if kind == "probs":
            raise StoreError(f"{file.name}: .npz views must be logits; drop --kind probs")
        labels, views, ids = read_npz_views(file)
        if views.shape[2] != len(st.classes) or (ids is None and views.shape[1] != sp.n):
            raise StoreError(
                f"{file.name} holds views of shape {list(views.shape[1:])}, split {split!r} "
                f"needs [{sp.n}, {len(st.classes)}]"
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
        name, split, kind=kind, scores=scores, meta=meta, dtype=dtype, replace=force
    )
    top1 = pred.metrics.get("top1")
    click.echo(
        f"imported {pred.id} ({kind}, {sp.n}×{len(st.classes)})"
        + (f", top1 {top1:.4f}" if top1 is not None else "")
    )
