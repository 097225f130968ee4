"""``ee import`` and ``ee export``: predictions in and out of the store."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import click
import numpy as np

from ..errors import StoreError
from ..store import open_store, parse_id


def read_timm_csv(path: Path) -> tuple[list[str], np.ndarray, str]:
    """timm ``inference.py`` CSV with full class columns (``--topk 0 --results-separate-col``).

    Returns (file names, scores [N, K], kind): columns ``logit_<k>`` hold logits,
    ``prob_<k>`` probabilities.
    """
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        rows = list(reader)
    if not header or not rows:
        raise StoreError(
            f"{path} is empty; export full class scores with timm's inference.py "
            "--topk 0 --results-separate-col --results-format csv"
        )
    cols = {}
    for i, name in enumerate(header):
        m = re.fullmatch(r"(logit|prob)_(\d+)", name)
        if m:
            cols[int(m.group(2))] = (i, m.group(1))
    if not cols or sorted(cols) != list(range(len(cols))):
        raise StoreError(
            f"{path} has no full set of logit_<k>/prob_<k> columns; export with timm's "
            "inference.py --topk 0 --results-separate-col"
        )
    kinds = {kind for _, kind in cols.values()}
    if len(kinds) != 1:
        raise StoreError(f"{path} mixes logit_ and prob_ columns; keep one kind per file")
    name_col = header.index("filename") if "filename" in header else 0
    names = [r[name_col] for r in rows]
    scores = np.array([[float(r[cols[k][0]]) for k in range(len(cols))] for r in rows], np.float32)
    return names, scores, "logits" if kinds == {"logit"} else "probs"


def align_rows(names: list[str], sample_ids: np.ndarray) -> np.ndarray:
    """Row order mapping file names onto the split's sample ids (exact id, else unique basename)."""
    index = {sid: i for i, sid in enumerate(sample_ids)}
    if all(n in index for n in names):
        order = [index[n] for n in names]
    else:
        base: dict[str, int] = {}
        for i, sid in enumerate(sample_ids):
            key = sid.rsplit("/", 1)[-1]
            base[key] = -1 if key in base else i
        missing = [n for n in names if base.get(n.rsplit("/", 1)[-1], -1) < 0]
        if missing:
            raise StoreError(
                f"{len(missing)} rows name no unique sample of the split "
                f"(first: {missing[0]!r}); check --split"
            )
        order = [base[n.rsplit("/", 1)[-1]] for n in names]
    if len(set(order)) != len(sample_ids) or len(order) != len(sample_ids):
        raise StoreError(
            f"the file has {len(names)} rows for {len(sample_ids)} samples of the split "
            "(or repeats one); it must cover each sample exactly once"
        )
    perm = np.empty(len(order), dtype=np.int64)
    perm[np.asarray(order)] = np.arange(len(order))
    return perm


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
@click.option("--force", is_flag=True, help="Replace an existing prediction of that name.")
def import_command(
    store: str, file: Path, split: str, name: str, kind: str | None, force: bool
) -> None:
    """Import FILE as prediction NAME/SPLIT into STORE.

    FILE is a .npy array [N, C] in the split's row order (a 1-D integer array imports labels),
    or the CSV of timm's inference.py with full class columns, matched to samples by file name.
    """
    st = open_store(store, "a")
    sp = st.split(split)
    meta = {"source": {"type": "import", "plugin": "ee", "params": {"file": file.name}}}
    if file.suffix.lower() == ".npy":
        data = np.load(file, allow_pickle=False)
        if data.ndim == 1:
            st.write_prediction(name, split, kind="labels", labels=data, meta=meta, replace=force)
            click.echo(f"imported labels {name}/{split} ({len(data)} rows)")
            return
        if data.ndim != 2 or data.shape != (sp.n, len(st.classes)):
            raise StoreError(
                f"{file.name} has shape {list(data.shape)}, split {split!r} needs "
                f"[{sp.n}, {len(st.classes)}]"
            )
        scores, kind = data, kind or "logits"
    elif file.suffix.lower() == ".csv":
        names, scores, csv_kind = read_timm_csv(file)
        if scores.shape[1] != len(st.classes):
            raise StoreError(
                f"{file.name} has {scores.shape[1]} class columns, the store "
                f"{len(st.classes)} classes"
            )
        scores = scores[align_rows(names, sp.sample_ids)]
        kind = kind or csv_kind
    else:
        raise StoreError(f"cannot import {file.name}: use a .npy array or a timm inference CSV")
    pred = st.write_prediction(name, split, kind=kind, scores=scores, meta=meta, replace=force)
    top1 = pred.metrics.get("top1")
    click.echo(
        f"imported {pred.id} ({kind}, {sp.n}×{len(st.classes)})"
        + (f", top1 {top1:.4f}" if top1 is not None else "")
    )


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
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to a file instead of stdout.",
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
    data = st.read(name, split)
    if pred.kind == "labels":
        if top_k > 1:
            raise StoreError(f"{pred.id} holds labels only; --top-k needs scores")
        ranked = data[:, None]
    else:
        ranked = np.argsort(-data, axis=1, kind="stable")[:, :top_k]
    text = submission_csv(st.split(split).sample_ids, ranked)
    if output is None:
        click.echo(text, nl=False)
    else:
        tmp = output.with_name(output.name + ".part")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(output)
        click.echo(f"wrote {output} ({len(ranked)} rows)", err=True)
