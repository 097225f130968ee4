"""``ee import`` and ``ee export``: predictions in and out of the store."""

from __future__ import annotations

import csv
import io
import re
import zipfile
from pathlib import Path

import click
import numpy as np

from ..errors import EEError, StoreError
from ..store import open_store, parse_id


def read_timm_csv(path: Path) -> tuple[list[str], np.ndarray, str]:
    """timm ``inference.py`` CSV with full class columns (``--topk 0 --results-separate-col``).

    Returns (file names, scores [N, K], kind): columns ``logit_<k>`` hold logits,
    ``prob_<k>`` probabilities.
    """
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            rows = [(reader.line_num, row) for row in reader if row]
    except UnicodeDecodeError:
        raise StoreError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    except csv.Error as exc:
        raise StoreError(f"{path} is not a readable CSV ({exc}); fix the file") from None
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
    scores = np.empty((len(rows), len(cols)), np.float32)
    for i, (line, row) in enumerate(rows):
        if len(row) != len(header):
            raise StoreError(
                f"{path} line {line}: {len(row)} columns, the header has {len(header)}; fix the row"
            )
        for k in range(len(cols)):
            value = row[cols[k][0]]
            try:
                scores[i, k] = float(value)
            except ValueError:
                raise StoreError(
                    f"{path} line {line}: {value!r} is not a number; fix the row"
                ) from None
    names = [row[name_col] for _, row in rows]
    return names, scores, "logits" if kinds == {"logit"} else "probs"


def read_npy(path: Path) -> np.ndarray:
    """A plain numeric array from a .npy file; pickles are never loaded."""
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        reason = " ".join(str(exc).split()).split(". ")[0][:100] or type(exc).__name__
        raise StoreError(
            f"{path.name} is not a plain numeric .npy array ({reason}); "
            "save it with numpy.save from a numeric array"
        ) from None
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "iuf":
        kind = data.dtype if isinstance(data, np.ndarray) else "an .npz archive"
        raise StoreError(
            f"{path.name} is not a plain numeric .npy array ({kind}); "
            "save it with numpy.save from a numeric array"
        )
    return data


# TTA merge modes for imported views, as ee_tta merges a producer's views: mode -> stored kind.
VIEW_MERGES = {"mean_logits": "logits", "mean_probs": "probs", "gmean": "logits"}
SAMPLE_ID_ARRAY = "sample_id"


def read_npz_views(path: Path) -> tuple[list[str], np.ndarray, list[str] | None]:
    """Test-time views from an .npz: (view names, logits [V, N, C], sample ids or None).

    Every array is one view's logits [N, C] (``numpy.savez(f, identity=a, hflip=b)``), except an
    optional 1-D text array ``sample_id`` that names each row's sample.
    """
    fix = "save the views with numpy.savez(FILE, view_name=logits, ...)"
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError, AttributeError, TypeError, zipfile.BadZipFile) as exc:
        reason = " ".join(str(exc).split()).split(". ")[0][:100] or type(exc).__name__
        raise StoreError(f"{path.name} is not a readable .npz archive ({reason}); {fix}") from None
    ids = arrays.pop(SAMPLE_ID_ARRAY, None)
    if ids is not None and (ids.ndim != 1 or ids.dtype.kind not in "US"):
        raise StoreError(f"{path.name}: {SAMPLE_ID_ARRAY} must be a 1-D array of texts")
    if not arrays:
        raise StoreError(f"{path.name} holds no view arrays; {fix}")
    for key, array in arrays.items():
        if array.ndim != 2 or array.dtype.kind not in "iuf":
            raise StoreError(f"{path.name}: {key!r} is not a numeric [N, C] logits array; {fix}")
    if len({a.shape for a in arrays.values()}) > 1:
        shapes = ", ".join(f"{k} {list(a.shape)}" for k, a in arrays.items())
        raise StoreError(f"{path.name}: the views differ in shape ({shapes}); give equal shapes")
    views = np.stack([a.astype(np.float32) for a in arrays.values()])
    return list(arrays), views, None if ids is None else [str(i) for i in ids]


def merge_view_arrays(views: np.ndarray, mode: str) -> np.ndarray:
    """Logits [V, N, C] of V views as one score row per sample (see ``VIEW_MERGES``)."""

    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    x = np.asarray(views, dtype=np.float64)
    if mode == "mean_logits":
        return x.mean(axis=0)
    if mode == "mean_probs":
        return np.exp(log_softmax(x)).mean(axis=0)
    return log_softmax(log_softmax(x).mean(axis=0))


def check_labels(data: np.ndarray, name: str, split: str, n: int, k: int) -> None:
    """A 1-D import must be one class index per sample of the split."""
    if data.dtype.kind not in "iu":
        raise StoreError(
            f"{name} holds {data.dtype} labels; save class indices as integers "
            "(a 2-D array imports scores)"
        )
    if len(data) != n:
        raise StoreError(
            f"{name} holds {len(data)} labels, split {split!r} has {n} samples; "
            "give one label per sample, in the split's order"
        )
    if data.size and (data.min() < 0 or data.max() >= k):
        raise StoreError(
            f"{name} holds labels outside 0..{k - 1}; give class indices of the store's {k} classes"
        )


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
@click.option(
    "--merge",
    type=click.Choice(list(VIEW_MERGES)),
    default="mean_logits",
    show_default=True,
    help="How the views of an .npz become one prediction (mean_probs stores probs).",
)
@click.option("--force", is_flag=True, help="Replace an existing prediction of that name.")
def import_command(
    store: str, file: Path, split: str, name: str, kind: str | None, merge: str, force: bool
) -> None:
    """Import FILE as prediction NAME/SPLIT into STORE.

    FILE is a .npy array [N, C] in the split's row order (a 1-D integer array imports labels),
    the CSV of timm's inference.py with full class columns, matched to samples by file name, or
    an .npz of test-time views: one logits array [N, C] per view, named after it (identity,
    hflip, ...), plus an optional 1-D text array sample_id naming each row's sample (else rows
    are in the split's order). The views are merged with --merge, as `ee produce` merges its
    own, and their names are recorded as the prediction's tta.

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
    elif file.suffix.lower() == ".csv":
        names, scores, csv_kind = read_timm_csv(file)
        if scores.shape[1] != len(st.classes):
            raise StoreError(
                f"{file.name} has {scores.shape[1]} class columns, the store "
                f"{len(st.classes)} classes"
            )
        scores = scores[align_rows(names, sp.sample_ids)]
        kind = kind or csv_kind
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
    if output is None:
        click.echo(text, nl=False)
    else:
        tmp = output.with_name(output.name + ".part")
        try:
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(output)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise EEError(
                f"cannot write {output}: {exc.strerror or exc}; choose a writable file with -o"
            ) from None
        click.echo(f"wrote {output} ({len(ranked)} rows)", err=True)
