"""The prediction store, format v1: a zarr v3 group holding splits and predictions.

Layout (the spec is schemas/README.md)::

    /                      attrs: ee {format, version}, classes, [class_names]
    splits/<split>/        sample_id [N] str, label [N] int32; attrs: fingerprint, n
    predictions/<name>/<split>/
                           scores [N, K] float16|float32 (kind logits|probs), or
                           label [N] int32 [+ votes [N, K]] (kind labels); attrs: see spec

A prediction's id is ``<name>/<split>``. Its attrs end with ``complete: true``, written after all
data: readers ignore predictions without it, so a crash mid-write never shows a half prediction.

This module holds the predictions; the root and the splits are ``store_root.StoreRoot``, the
records (``Split``, ``Prediction``, names) ``records.py``, and locating and opening a store
``location.py``. Their public names are importable from here as well.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .chunks import RowChunks, chunk_rows_for
from .errors import AlignmentError, StoreError
from .location import open_root, store_location
from .prediction_io import PredictionWriter, clean_attrs
from .records import (
    FORMAT,
    KINDS,
    NAME_RE,
    VERSION,
    Prediction,
    Split,
    SplitHeader,
    check_name,
    label_map,
    parse_id,
    short_list,
    split_fingerprint,
)
from .staging import final_path, publish, recover, staged_path
from .store_root import StoreRoot
from .xarray_view import labelled, require_xarray

__all__ = [
    "FORMAT",
    "KINDS",
    "NAME_RE",
    "VERSION",
    "Prediction",
    "PredictionStore",
    "Split",
    "SplitHeader",
    "check_name",
    "open_store",
    "parse_id",
    "split_fingerprint",
    "store_location",
]

# What ``read`` and ``iter_rows`` accept as ``dtype`` besides None (float32) and "stored".
_READ_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))


class PredictionStore(StoreRoot):
    """Read and write predictions in a zarr v3 group (a path or an fsspec URL)."""

    def _pred_group(self, name: str, split: str) -> zarr.Group | None:
        g = self.group.get(f"predictions/{name}/{split}")
        return g if isinstance(g, zarr.Group) else None

    def exists(self, name: str, split: str, *, include_incomplete: bool = False) -> bool:
        g = self._pred_group(name, split)
        return g is not None and (include_incomplete or g.attrs.get("complete") is True)

    # --- writing ----------------------------------------------------------------------------

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
        if kind not in KINDS:
            raise StoreError(f"unknown prediction kind {kind!r}; use one of {', '.join(KINDS)}")
        if dtype not in ("float16", "float32"):
            raise StoreError(f"scores dtype {dtype!r} is not supported; use float16 or float32")
        header = self.split_header(split)  # the sample ids are not needed to write
        store_classes = self.classes
        pred_classes = [str(c) for c in classes] if classes is not None else store_classes
        if not pred_classes:
            raise StoreError(f"store {self.path} has no classes yet; run `ee store init` first")
        if self.mode == "r" or getattr(self.group.store, "read_only", False):
            raise StoreError(
                f"store {self.path} is open read-only: cannot write {name}/{split}; "
                "open it for writing (mode 'a')"
            )  # refused before the lock: a read-only store leaves no lock file behind
        lock = self.lock(f"{name}--{split}")
        lock.acquire()
        try:
            recover(self.group, name, split)  # what a killed replace left: finished or undone
            old = self._pred_group(name, split)
            complete = old is not None and old.attrs.get("complete") is True
            if complete and not replace:
                raise StoreError(
                    f"prediction {name}/{split} already exists; pass replace (--force) "
                    "to overwrite it or choose another name"
                )
            if old is not None and not complete:  # an unfinished write: nothing to keep
                del self.group[final_path(name, split)]
        except BaseException:
            lock.release()
            raise
        # a replace writes aside and swaps only once the new version is complete (staging.py)
        path = staged_path(name, split) if complete else final_path(name, split)
        swap = (lambda: publish(self.group, name, split)) if complete else None
        return PredictionWriter(
            self.group,
            name,
            header,
            kind=kind,
            classes=pred_classes,
            store_classes=store_classes,
            meta=dict(meta or {}),
            dtype=dtype,
            chunk_rows=chunk_rows or chunk_rows_for(len(pred_classes), np.dtype(dtype).itemsize),
            label_map=label_map(store_classes, pred_classes),
            lock=lock,
            path=path,
            publish=swap,
        )

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
        assert w.group is not None
        shape = (w.split.n,) if kind == "labels" else (w.split.n, len(w.classes))
        # the attrs as just written (held by the group object): no need to read them back
        return Prediction(name, split, kind, shape, clean_attrs(w.group.attrs.asdict()))

    def writing_path(self, name: str, split: str) -> str:
        """Where the write of ``name/split`` now open (another process holds its lock) puts
        its arrays: the staged copy while it replaces a prediction, else the prediction itself."""
        staged = staged_path(name, split)
        return staged if isinstance(self.group.get(staged), zarr.Group) else final_path(name, split)

    def delete(self, name: str, split: str) -> None:
        with self.lock(f"{name}--{split}"):
            recover(self.group, name, split)  # a killed replace's copy must not come back later
            if self._pred_group(name, split) is None:
                raise StoreError(f"no prediction {name}/{split} to delete")
            del self.group[final_path(name, split)]
            if not list(self.group[f"predictions/{name}"].group_keys()):
                del self.group[f"predictions/{name}"]

    # --- listing ----------------------------------------------------------------------------

    def names(self) -> list[str]:
        with self._reading("the predictions group"):
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
            with self._reading(f"predictions/{name}"):
                members = self.group[f"predictions/{name}"].group_keys()
                splits = sorted(m for m in members if not m.startswith("."))  # staging: hidden
            for sp in splits:
                if split is not None and sp != split:
                    continue
                with self._reading(f"prediction {name}/{sp}"):
                    pred, _ = self._load(name, sp, self.group[f"predictions/{name}/{sp}"])
                if (pred.complete or include_incomplete) and pred.matches(where):
                    out.append(pred)
        return out

    def _load(self, name: str, split: str, g: zarr.Group) -> tuple[Prediction, Any]:
        """The prediction in group ``g`` and its main array (None where it has none)."""
        attrs = clean_attrs(g.attrs.asdict())
        kind = str(attrs.get("kind", "?"))
        arr = g.get("label" if kind == "labels" else "scores")
        shape = tuple(arr.shape) if isinstance(arr, zarr.Array) else ()
        return Prediction(name, split, kind, shape, attrs), arr

    # --- reading ----------------------------------------------------------------------------

    def get(self, name: str, split: str) -> Prediction:
        """A complete prediction, checked to be readable: arrays, shapes, dtypes, its split."""
        return self._open(name, split)[0]

    def _open(self, name: str, split: str) -> tuple[Prediction, zarr.Array]:
        """``get``'s prediction and its checked main array, each looked up once."""
        with self._reading(f"prediction {name}/{split}"):
            g = self._pred_group(name, split)
            found = g is not None and g.attrs.get("complete") is True
            pred, arr = self._load(name, split, g) if found else (None, None)
        if pred is None:
            raise StoreError(
                f"store {self.path} has no complete prediction {name}/{split}; see `ee ls STORE`"
            )
        self._check_readable(pred, arr)
        return pred, arr

    def _check_readable(self, pred: Prediction, arr: Any) -> None:
        what = f"prediction {pred.id}"
        classes = pred.attrs.get("classes", self.classes)
        if pred.kind not in KINDS or not isinstance(classes, list):
            problem = f"unknown kind {pred.kind!r}" if pred.kind not in KINDS else "bad classes"
            raise self._damaged(what, problem)
        ids, _, fp, _ = self._split_arrays(pred.split)
        if pred.attrs.get("split_fingerprint") != fp:
            raise AlignmentError(
                f"{pred.id} was predicted on other samples than split {pred.split!r} "
                f"(fingerprint {pred.attrs.get('split_fingerprint')}, the split's {fp}): "
                "re-predict it on the store's split"
            )
        n = ids.shape[0]
        key, shape, dtypes = (
            ("label", (n,), ("int32",))
            if pred.kind == "labels"
            else ("scores", (n, len(classes)), ("float16", "float32"))
        )
        if not isinstance(arr, zarr.Array):
            raise self._damaged(what, f"no {key} array")
        if tuple(arr.shape) != shape:
            raise self._damaged(what, f"{key} of shape {list(arr.shape)}, expected {list(shape)}")
        if str(arr.dtype) not in dtypes:
            raise self._damaged(what, f"{key} of dtype {arr.dtype}, expected {' or '.join(dtypes)}")

    def classes_of(self, pred: Prediction) -> list[str]:
        return [str(c) for c in pred.attrs.get("classes", self.classes)]

    def read(self, name: str, split: str, *, dtype: Any = None) -> np.ndarray:
        """Scores [N, K] (kind logits/probs) or labels [N] int32 (kind labels).

        ``dtype``: None gives float32, the contract every consumer may rely on; ``"stored"``
        gives the stored dtype (float16 by default: half the bytes and no widening, for readers
        that widen later or not at all); ``"float16"``/``"float32"`` give that dtype. Labels are
        returned as stored whatever ``dtype`` says.
        """
        return self._read(*self._open(name, split), dtype)

    def _read(self, pred: Prediction, arr: zarr.Array, dtype: Any) -> np.ndarray:
        want = self._read_dtype(pred, arr, dtype)
        with self._reading(f"prediction {pred.id}"):
            return RowChunks(arr).read(dtype=want)

    def to_xarray(self, name: str, split: str, *, dtype: Any = None) -> Any:
        """The prediction as an ``xarray.DataArray``: ``read``'s values (``dtype`` as there)
        with coordinates ``sample`` (the split's sample ids) and ``class`` (the prediction's
        class ids), attrs the prediction's; kind labels gives ``label(sample)``
        (``xarray_view.py``). Needs the ``xarray`` extra."""
        xr = require_xarray()  # before any read: a missing extra costs nothing
        pred, arr = self._open(name, split)
        values = self._read(pred, arr, dtype)
        ids = self.split(split).sample_ids
        return labelled(xr, pred, values, ids, self.classes_of(pred))

    def read_votes(self, name: str, split: str) -> np.ndarray | None:
        g = self.group[f"predictions/{name}/{split}"]
        return RowChunks(g["votes"]).read() if "votes" in g else None

    def iter_rows(
        self, name: str, split: str, chunk_rows: int | None = None, *, dtype: Any = None
    ) -> Iterator[tuple[slice, np.ndarray]]:
        """Row blocks aligned to the stored chunks, so each chunk is read once.

        ``dtype`` as for ``read``: float32 by default, ``"stored"`` for the stored dtype.
        """
        pred, arr = self._open(name, split)
        want = self._read_dtype(pred, arr, dtype)
        chunks = RowChunks(arr)
        for rows, pending in chunks.read_ahead(chunk_rows or chunks.step, want):
            with self._reading(f"prediction {pred.id}"):
                block = pending.result()
            yield rows, block

    @staticmethod
    def _read_dtype(pred: Prediction, arr: zarr.Array, dtype: Any) -> np.dtype | None:
        """The dtype ``read`` returns (None: as stored), or a StoreError naming the choices."""
        if pred.kind == "labels" or (isinstance(dtype, str) and dtype == "stored"):
            return None
        if dtype is None:
            return np.dtype(np.float32)
        try:
            want = np.dtype(dtype)
        except TypeError:
            want = None
        if want not in _READ_DTYPES:
            raise StoreError(
                f"cannot read scores as {dtype!r}; use dtype=None (float32), 'stored', "
                "'float16' or 'float32'"
            )
        return None if want == arr.dtype else want

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
                    f"prediction {p.id} covers classes {short_list(self.classes_of(p))}, "
                    "not the store's; "
                    "map it to the store's classes or use a combiner that accepts class subsets"
                )


def open_store(path: str | Path, mode: str = "a") -> PredictionStore:
    """Open (``r``, ``a``) or create (``a``, ``w``) a prediction store at a path or fsspec URL.

    URLs (``s3://bucket/ee.zarr``, ``memory://ee.zarr``) go through fsspec; ``file://`` URLs are
    plain paths. ``a`` never overwrites: it creates a store only where none exists.
    """
    group, spath = open_root(path, mode)
    return PredictionStore(group, spath, mode)
