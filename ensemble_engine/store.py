"""The prediction store, format v1: a zarr v3 group holding splits and predictions.

Layout (the spec is schemas/README.md)::

    /                      attrs: ee {format, version}, classes, [class_names]
    splits/<split>/        sample_id [N] str, label [N] int32; attrs: fingerprint, n
    predictions/<name>/<split>/
                           scores [N, K] float16|float32 (kind logits|probs), or
                           label [N] int32 [+ votes [N, K]] (kind labels); attrs: see spec

A prediction's id is ``<name>/<split>``. Its attrs end with ``complete: true``, written after all
data: readers ignore predictions without it, so a crash mid-write never shows a half prediction.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .errors import AlignmentError, FormatVersionError, StoreError
from .locks import StoreLock
from .prediction_io import PredictionWriter, chunk_rows_for, clean_attrs

FORMAT = "ee.predictions"
VERSION = 1
KINDS = ("logits", "probs", "labels")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=,-]{0,199}$")


def check_name(value: str, what: str) -> str:
    """Prediction names and split names are single path segments: no '/', no '..', not empty."""
    if not isinstance(value, str) or not NAME_RE.match(value) or ".." in value:
        raise StoreError(
            f"invalid {what} {value!r}: use letters, digits and . _ - + = , "
            "(starting with a letter or digit, no '/' or '..')"
        )
    return value


def split_fingerprint(sample_ids: Sequence[str]) -> str:
    """sha256 of the ordered sample ids joined by newlines (first 16 hex digits)."""
    import hashlib

    h = hashlib.sha256("\n".join(sample_ids).encode("utf-8"))
    return "sha256:" + h.hexdigest()[:16]


def parse_id(pred_id: str) -> tuple[str, str]:
    """``name/split`` → (name, split)."""
    parts = pred_id.split("/")
    if len(parts) != 2:
        raise StoreError(
            f"invalid prediction id {pred_id!r}: the form is NAME/SPLIT, e.g. final/test"
        )
    return check_name(parts[0], "prediction name"), check_name(parts[1], "split name")


@dataclass(frozen=True)
class Split:
    name: str
    sample_ids: np.ndarray
    labels: np.ndarray
    fingerprint: str

    @property
    def n(self) -> int:
        return len(self.sample_ids)

    @property
    def labelled(self) -> bool:
        return bool((self.labels >= 0).any())


@dataclass(frozen=True)
class Prediction:
    name: str
    split: str
    kind: str
    shape: tuple[int, ...]
    attrs: dict[str, Any] = field(repr=False)

    @property
    def id(self) -> str:
        return f"{self.name}/{self.split}"

    @property
    def complete(self) -> bool:
        return self.attrs.get("complete") is True

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.attrs.get("metrics") or {})

    def matches(self, where: dict[str, Any]) -> bool:
        for key, want in where.items():
            have = self.attrs.get(key)
            if have != want and str(have) != str(want):
                return False
        return True


class PredictionStore:
    """Read and write predictions in a zarr v3 group (a path or an fsspec URL)."""

    def __init__(self, group: zarr.Group, path: str, mode: str) -> None:
        self.group = group
        self.path = path
        self.mode = mode

    # --- root -------------------------------------------------------------------------------

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.group.attrs.get("classes", [])]

    @property
    def class_names(self) -> list[str] | None:
        names = self.group.attrs.get("class_names")
        return None if names is None else [str(n) for n in names]

    def set_classes(self, classes: Sequence[str], class_names: Sequence[str] | None = None) -> None:
        classes = [str(c) for c in classes]
        if len(set(classes)) != len(classes) or not classes:
            raise StoreError("class ids must be unique and non-empty")
        with self.lock("meta"):
            self._set_classes(classes, class_names)

    def _set_classes(self, classes: list[str], class_names: Sequence[str] | None) -> None:
        self.group = zarr.open_group(store=self.group.store, mode="r+")  # see other writers
        current = self.classes
        if current and current != classes:
            raise AlignmentError(
                f"store {self.path} holds classes {_short(current)}, not {_short(classes)}: "
                "use a separate store for a different class space"
            )
        if not current:
            update: dict[str, Any] = {"classes": classes}
            if class_names is not None:
                update["class_names"] = [str(n) for n in class_names]
            self.group.attrs.update(update)

    # --- splits -----------------------------------------------------------------------------

    def split_names(self) -> list[str]:
        if "splits" not in self.group:
            return []
        return sorted(self.group["splits"].group_keys())

    def add_split(
        self,
        name: str,
        sample_ids: Sequence[str],
        labels: Sequence[int] | np.ndarray | None = None,
        *,
        replace: bool = False,
    ) -> str:
        """Register a split: the same ids is a no-op, other ids an error unless ``replace``."""
        check_name(name, "split name")
        ids = [str(s) for s in sample_ids]
        if not ids:
            raise StoreError(f"split {name!r} has no samples")
        if len(set(ids)) != len(ids):
            raise StoreError(f"split {name!r} has duplicate sample ids")
        lab = np.full(len(ids), -1, np.int32) if labels is None else np.asarray(labels, np.int32)
        if lab.shape != (len(ids),):
            raise StoreError(f"split {name!r}: {len(lab)} labels for {len(ids)} samples")
        if len(self.classes) and (lab >= len(self.classes)).any():
            raise StoreError(
                f"split {name!r} has labels outside the store's {len(self.classes)} classes"
            )
        fp = split_fingerprint(ids)
        with self.lock("meta"):
            return self._add_split(name, ids, lab, fp, replace)

    def _add_split(self, name: str, ids: list[str], lab: np.ndarray, fp: str, replace: bool) -> str:
        if name in self.split_names():
            old = self.group[f"splits/{name}"].attrs.get("fingerprint")
            if old == fp and not replace:
                return fp
            if not replace:
                raise AlignmentError(
                    f"split {name!r} in {self.path} holds other samples "
                    f"(fingerprint {old}, new {fp}): "
                    "use another store, or re-register with replace"
                )
            del self.group[f"splits/{name}"]
        g = self.group.require_group(f"splits/{name}")
        sid = g.create_array("sample_id", shape=(len(ids),), dtype=str, chunks=(len(ids),))
        sid[:] = np.array(ids, dtype=np.dtypes.StringDType())
        arr = g.create_array("label", shape=(len(ids),), dtype="int32", chunks=(len(ids),))
        arr[:] = lab
        g.attrs.update({"fingerprint": fp, "n": len(ids)})
        return fp

    def split(self, name: str) -> Split:
        if name not in self.split_names():
            known = ", ".join(self.split_names()) or "none"
            raise StoreError(
                f"store {self.path} has no split {name!r} (splits: {known}); "
                "register it with `ee store init STORE --data DIR`"
            )
        g = self.group[f"splits/{name}"]
        ids = np.array([str(x) for x in g["sample_id"][:]], dtype=object)
        return Split(name, ids, np.asarray(g["label"][:]), str(g.attrs["fingerprint"]))

    # --- predictions ------------------------------------------------------------------------

    def _pred_group(self, name: str, split: str) -> zarr.Group | None:
        key = f"predictions/{name}/{split}"
        return self.group[key] if key in self.group else None

    def exists(self, name: str, split: str, *, include_incomplete: bool = False) -> bool:
        g = self._pred_group(name, split)
        return g is not None and (include_incomplete or g.attrs.get("complete") is True)

    def prediction_writer(
        self,
        name: str,
        split: str,
        *,
        kind: str,
        meta: dict[str, Any] | None = None,
        classes: Sequence[str] | None = None,
        dtype: str = "float16",
        replace: bool = False,
        chunk_rows: int | None = None,
    ) -> PredictionWriter:
        """A context manager that writes a prediction row block by row block."""
        check_name(name, "prediction name")
        sp = self.split(split)
        if kind not in KINDS:
            raise StoreError(f"unknown prediction kind {kind!r}; use one of {', '.join(KINDS)}")
        if dtype not in ("float16", "float32"):
            raise StoreError(f"scores dtype {dtype!r} is not supported; use float16 or float32")
        pred_classes = [str(c) for c in classes] if classes is not None else self.classes
        if not pred_classes:
            raise StoreError(f"store {self.path} has no classes yet; run `ee store init` first")
        lock = self.lock(f"{name}--{split}")
        lock.acquire()
        try:
            if self.exists(name, split) and not replace:
                raise StoreError(
                    f"prediction {name}/{split} already exists; pass replace (--force) "
                    "to overwrite it or choose another name"
                )
            if self._pred_group(name, split) is not None:
                del self.group[f"predictions/{name}/{split}"]
        except BaseException:
            lock.release()
            raise
        return PredictionWriter(
            self.group,
            name,
            sp,
            kind=kind,
            classes=pred_classes,
            store_classes=self.classes,
            meta=dict(meta or {}),
            dtype=dtype,
            chunk_rows=chunk_rows or chunk_rows_for(len(pred_classes), np.dtype(dtype).itemsize),
            label_map=_label_map(self.classes, pred_classes),
            lock=lock,
        )

    def lock(self, key: str) -> StoreLock:
        """An advisory lock on ``key`` in this store (see ``ensemble_engine.locks``)."""
        return StoreLock(self.path, key)

    def write_prediction(
        self,
        name: str,
        split: str,
        *,
        kind: str,
        scores: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        votes: np.ndarray | None = None,
        meta: dict[str, Any] | None = None,
        classes: Sequence[str] | None = None,
        dtype: str = "float16",
        replace: bool = False,
    ) -> Prediction:
        """Write a whole prediction at once (see ``prediction_writer`` for streaming)."""
        with self.prediction_writer(
            name, split, kind=kind, meta=meta, classes=classes, dtype=dtype, replace=replace
        ) as w:
            if kind == "labels":
                if labels is None:
                    raise StoreError("a labels prediction needs labels")
                w.write_labels(np.asarray(labels), None if votes is None else np.asarray(votes))
            else:
                if scores is None:
                    raise StoreError(f"a {kind} prediction needs scores")
                w.write(np.asarray(scores))
        return self.get(name, split)

    def names(self) -> list[str]:
        if "predictions" not in self.group:
            return []
        return sorted(self.group["predictions"].group_keys())

    def list(
        self,
        pattern: str = "*",
        *,
        split: str | None = None,
        include_incomplete: bool = False,
        **where: Any,
    ) -> list[Prediction]:
        """Predictions whose name matches ``pattern`` (fnmatch) and whose attrs equal ``where``."""
        out = []
        for name in self.names():
            if not fnmatch.fnmatchcase(name, pattern):
                continue
            for sp in sorted(self.group[f"predictions/{name}"].group_keys()):
                if split is not None and sp != split:
                    continue
                pred = self._load(name, sp)
                if (pred.complete or include_incomplete) and pred.matches(where):
                    out.append(pred)
        return out

    def _load(self, name: str, split: str) -> Prediction:
        g = self.group[f"predictions/{name}/{split}"]
        attrs = clean_attrs(g.attrs.asdict())
        kind = str(attrs.get("kind", "?"))
        key = "label" if kind == "labels" else "scores"
        shape = tuple(g[key].shape) if key in g else ()
        return Prediction(name, split, kind, shape, attrs)

    def get(self, name: str, split: str) -> Prediction:
        if not self.exists(name, split):
            raise StoreError(
                f"store {self.path} has no complete prediction {name}/{split}; see `ee ls STORE`"
            )
        return self._load(name, split)

    def classes_of(self, pred: Prediction) -> list[str]:
        return [str(c) for c in pred.attrs.get("classes", self.classes)]

    def read(self, name: str, split: str) -> np.ndarray:
        """Scores as float32 [N, K] (kind logits/probs) or labels [N] (kind labels)."""
        pred = self.get(name, split)
        g = self.group[f"predictions/{name}/{split}"]
        if pred.kind == "labels":
            return np.asarray(g["label"][:])
        return np.asarray(g["scores"][:], dtype=np.float32)

    def read_votes(self, name: str, split: str) -> np.ndarray | None:
        g = self.group[f"predictions/{name}/{split}"]
        return np.asarray(g["votes"][:]) if "votes" in g else None

    def iter_rows(
        self, name: str, split: str, chunk_rows: int | None = None
    ) -> Iterator[tuple[slice, np.ndarray]]:
        """Row blocks aligned to the stored chunks, so each chunk is read once."""
        pred = self.get(name, split)
        g = self.group[f"predictions/{name}/{split}"]
        arr = g["label"] if pred.kind == "labels" else g["scores"]
        step = chunk_rows or arr.chunks[0]
        for start in range(0, arr.shape[0], step):
            rows = slice(start, min(start + step, arr.shape[0]))
            block = np.asarray(arr[rows])
            yield rows, (block if pred.kind == "labels" else block.astype(np.float32))

    def delete(self, name: str, split: str) -> None:
        if self._pred_group(name, split) is None:
            raise StoreError(f"no prediction {name}/{split} to delete")
        del self.group[f"predictions/{name}/{split}"]
        if not list(self.group[f"predictions/{name}"].group_keys()):
            del self.group[f"predictions/{name}"]

    def check_aligned(self, preds: Sequence[Prediction], *, allow_subset: bool = False) -> None:
        """``preds`` must share one split fingerprint and (unless allowed) the store's classes."""
        fps = {p.attrs.get("split_fingerprint") for p in preds}
        if len(fps) > 1:
            raise AlignmentError(
                "predictions " + ", ".join(p.id for p in preds) + " were made on different sample "
                "lists (split fingerprints differ): re-predict them on the store's split"
            )
        for p in preds:
            if not allow_subset and self.classes_of(p) != self.classes:
                raise AlignmentError(
                    f"prediction {p.id} covers classes {_short(self.classes_of(p))}, "
                    "not the store's; "
                    "map it to the store's classes or use a combiner that accepts class subsets"
                )


def _label_map(store_classes: Sequence[str], pred_classes: Sequence[str]) -> np.ndarray:
    """Store class index → index in the prediction's class space (``__other__`` or -1 if absent)."""
    from .combiner import OTHER

    pos = {c: i for i, c in enumerate(pred_classes)}
    other = pos.get(OTHER, -1)
    return np.array([pos.get(c, other) for c in store_classes] + [-1], dtype=np.int64)


def _short(items: Sequence[str], n: int = 5) -> str:
    items = list(items)
    return "[" + ", ".join(items[:n]) + (", …" if len(items) > n else "") + f"] ({len(items)})"


def open_store(path: str | Path, mode: str = "a") -> PredictionStore:
    """Open (``r``, ``a``) or create (``a``, ``w``) a prediction store at a path or fsspec URL."""
    if mode not in ("r", "a", "w"):
        raise StoreError(f"unknown store mode {mode!r}; use r, a or w")
    spath = str(path)
    is_url = "://" in spath
    if mode == "r" or (mode == "a" and _exists(spath, is_url)):
        try:
            group = zarr.open_group(store=spath, mode="r" if mode == "r" else "r+")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            raise StoreError(
                f"no prediction store at {spath}; create one with "
                "`ee store init STORE --data DIR` or `ee produce`"
            ) from None
        _check_version(group, spath)
        return PredictionStore(group, spath, mode)
    group = zarr.open_group(store=spath, mode="w")
    group.attrs.update({"ee": {"format": FORMAT, "version": VERSION}})
    return PredictionStore(group, spath, mode)


def _exists(spath: str, is_url: bool) -> bool:
    if not is_url:
        return (Path(spath) / "zarr.json").exists()
    try:
        zarr.open_group(store=spath, mode="r")
        return True
    except Exception:
        return False


def _check_version(group: zarr.Group, spath: str) -> None:
    info = group.attrs.get("ee")
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise StoreError(
            f"{spath} is a zarr group but not an ee prediction store "
            "(root attrs lack ee.format); point at a store written by ee"
        )
    version = info.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise FormatVersionError(
            f"store {spath} uses format version {version}, newer than this ee reads ({VERSION}); "
            "upgrade ensemble-engine"
        )
