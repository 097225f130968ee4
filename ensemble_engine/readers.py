"""Prediction files users bring: timm's inference CSV, .npy arrays, .npz of test-time views.

Each reader returns plain arrays or raises ``StoreError`` with one line naming the fault and the
fix; ``ee import`` maps the result onto a store split.
"""

from __future__ import annotations

import csv
import re
import zipfile
from pathlib import Path

import numpy as np

from .errors import StoreError


def read_timm_csv(path: Path) -> tuple[list[str], np.ndarray, str]:
    """timm ``inference.py`` CSV with full class columns (``--topk 0 --results-separate-col``).

    Returns (file names, scores [N, K], kind): columns ``logit_<k>`` hold logits,
    ``prob_<k>`` probabilities.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # a BOM is not a column
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


#: How far a row of imported probabilities may sum from 1. Rounding to float16 moves each value
#: by at most 2^-11 of itself (2^-25 absolute below 2^-14), so a row that summed to 1 sums to
#: 1 ± (4.9e-4 + K * 3e-8) once rounded: 5.2e-4 for 1000 classes; a softmax computed in float16
#: or a CSV printed with four or five decimals is off by a few times that. 0.01 admits all of
#: these and still refuses every unnormalised score: percentages sum to 100, scores of 5.0 to 5K.
PROBS_SUM_TOLERANCE = 0.01

#: Slack above 1 for a single probability (a float32 softmax may give 1.0000001).
PROBS_MAX_SLACK = 1e-6


def check_probs(scores: np.ndarray, name: str, row_names: list[str] | None = None) -> None:
    """Imported probabilities must be in [0, 1] and sum to 1 per row (``PROBS_SUM_TOLERANCE``).

    Refuses with the first bad row, named by ``row_names`` (a CSV's file names) or its index.
    """
    x = np.asarray(scores, dtype=np.float64)
    sums = x.sum(axis=1)
    bad = (x.min(axis=1) < 0) | (x.max(axis=1) > 1 + PROBS_MAX_SLACK)
    bad |= ~(np.abs(sums - 1) <= PROBS_SUM_TOLERANCE)  # NaN sums are bad too
    if not bad.any():
        return
    i = int(np.argmax(bad))
    row = f"the row of {row_names[i]!r}" if row_names is not None else f"row index {i}"
    raise StoreError(
        f"{name}: {row} is no probability distribution (values {x[i].min():.4g}..{x[i].max():.4g}"
        f", sum {sums[i]:.6g}; probabilities lie in [0, 1] and sum to 1 ± {PROBS_SUM_TOLERANCE:g}"
        "); import unnormalised scores as --kind logits, or divide percentages by 100"
    )


def check_float16_range(scores: np.ndarray, name: str) -> None:
    """Finite scores beyond float16's range (±65504) cannot be stored as float16."""
    x = np.asarray(scores)
    with np.errstate(over="ignore"):
        over = np.isfinite(x) & ~np.isfinite(x.astype(np.float16))
    rows = int(over.any(axis=1).sum()) if over.ndim == 2 else int(over.sum())
    if rows:
        raise StoreError(
            f"{name}: {rows} rows hold scores beyond float16's range (±65504), the store's "
            "default; import them with --dtype float32"
        )


def check_labels(
    data: np.ndarray, name: str, split: str, n: int, k: int, space: str = "the store's"
) -> None:
    """A 1-D import must be one class index per sample of the split (``space``: whose ``k``
    classes the indices count, for the message)."""
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
            f"{name} holds labels outside 0..{k - 1}; give class indices of {space} {k} classes"
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
