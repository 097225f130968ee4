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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .errors import AlignmentError, FormatVersionError, StoreError
from .locks import StoreLock
from .prediction_io import PredictionWriter, RowChunks, chunk_rows_for, clean_attrs

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
        metrics = self.attrs.get("metrics")
        return dict(metrics) if isinstance(metrics, dict) else {}  # shown only; validate flags it

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

    # --- damage -----------------------------------------------------------------------------

    def _damaged(self, what: str, problem: str, fix: str = "re-create it") -> StoreError:
        problem = " ".join(str(problem).split())[:160]
        return StoreError(
            f"store {self.path}: {what} is damaged: {problem}; see `ee validate STORE`, then {fix}"
        )

    @contextmanager
    def _reading(self, what: str, fix: str = "re-create it") -> Iterator[None]:
        """zarr's errors on hand-edited metadata or broken chunks, as one line naming ``what``."""
        try:
            yield
        except (KeyError, ValueError, IndexError, TypeError) as exc:  # zarr's are ValueErrors
            raise self._damaged(what, f"{type(exc).__name__}: {exc}", fix) from None

    # --- root -------------------------------------------------------------------------------

    @property
    def classes(self) -> list[str]:
        classes = self.group.attrs.get("classes", [])
        if not isinstance(classes, list):
            raise self._damaged(
                "the root",
                f"attrs classes is {type(classes).__name__}, not a list of class ids",
                "re-create the store",
            )
        return [str(c) for c in classes]

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
        with self._reading("the splits group", "rebuild the store with `ee store init`"):
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

    def _split_group(self, name: str) -> zarr.Group:
        if name not in self.split_names():
            known = ", ".join(self.split_names()) or "none"
            raise StoreError(
                f"store {self.path} has no split {name!r} (splits: {known}); "
                "register it with `ee store init STORE --data DIR`"
            )
        what, fix = f"split {name}", "rebuild the store with `ee store init`"
        with self._reading(what, fix):
            g = self.group[f"splits/{name}"]
            missing = [key for key in ("sample_id", "label") if key not in g]
            fingerprint = g.attrs.get("fingerprint")
        if missing:
            raise self._damaged(what, f"no {missing[0]} array", fix)
        if not isinstance(fingerprint, str):
            raise self._damaged(what, "no fingerprint in its attrs", fix)
        return g

    def split(self, name: str) -> Split:
        g = self._split_group(name)
        with self._reading(f"split {name}", "rebuild the store with `ee store init`"):
            ids = np.array([str(x) for x in g["sample_id"][:]], dtype=object)
            labels = np.asarray(g["label"][:])
        if labels.shape != ids.shape:
            raise self._damaged(
                f"split {name}",
                f"{len(labels)} labels for {len(ids)} sample ids",
                "rebuild the store with `ee store init`",
            )
        return Split(name, ids, labels, str(g.attrs["fingerprint"]))

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
                splits = sorted(self.group[f"predictions/{name}"].group_keys())
            for sp in splits:
                if split is not None and sp != split:
                    continue
                with self._reading(f"prediction {name}/{sp}"):
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
        """A complete prediction, checked to be readable: arrays, shapes, dtypes, its split."""
        with self._reading(f"prediction {name}/{split}"):
            pred = self._load(name, split) if self.exists(name, split) else None
        if pred is None:
            raise StoreError(
                f"store {self.path} has no complete prediction {name}/{split}; see `ee ls STORE`"
            )
        self._check_readable(pred)
        return pred

    def _check_readable(self, pred: Prediction) -> None:
        what = f"prediction {pred.id}"
        classes = pred.attrs.get("classes", self.classes)
        if pred.kind not in KINDS or not isinstance(classes, list):
            problem = f"unknown kind {pred.kind!r}" if pred.kind not in KINDS else "bad classes"
            raise self._damaged(what, problem)
        sg = self._split_group(pred.split)
        fp = sg.attrs["fingerprint"]
        if pred.attrs.get("split_fingerprint") != fp:
            raise AlignmentError(
                f"{pred.id} was predicted on other samples than split {pred.split!r} "
                f"(fingerprint {pred.attrs.get('split_fingerprint')}, the split's {fp}): "
                "re-predict it on the store's split"
            )
        n = sg["sample_id"].shape[0]
        key, shape, dtypes = (
            ("label", (n,), ("int32",))
            if pred.kind == "labels"
            else ("scores", (n, len(classes)), ("float16", "float32"))
        )
        with self._reading(what):
            arr = self.group[f"predictions/{pred.name}/{pred.split}"].get(key)
        if arr is None:
            raise self._damaged(what, f"no {key} array")
        if tuple(arr.shape) != shape:
            raise self._damaged(what, f"{key} of shape {list(arr.shape)}, expected {list(shape)}")
        if str(arr.dtype) not in dtypes:
            raise self._damaged(what, f"{key} of dtype {arr.dtype}, expected {' or '.join(dtypes)}")

    def classes_of(self, pred: Prediction) -> list[str]:
        return [str(c) for c in pred.attrs.get("classes", self.classes)]

    def read(self, name: str, split: str) -> np.ndarray:
        """Scores as float32 [N, K] (kind logits/probs) or labels [N] (kind labels)."""
        pred = self.get(name, split)
        g = self.group[f"predictions/{name}/{split}"]
        with self._reading(f"prediction {pred.id}"):
            if pred.kind == "labels":
                return RowChunks(g["label"]).read()
            return RowChunks(g["scores"]).read(dtype=np.float32)

    def read_votes(self, name: str, split: str) -> np.ndarray | None:
        g = self.group[f"predictions/{name}/{split}"]
        return RowChunks(g["votes"]).read() if "votes" in g else None

    def iter_rows(
        self, name: str, split: str, chunk_rows: int | None = None
    ) -> Iterator[tuple[slice, np.ndarray]]:
        """Row blocks aligned to the stored chunks, so each chunk is read once."""
        pred = self.get(name, split)
        g = self.group[f"predictions/{name}/{split}"]
        chunks = RowChunks(g["label"] if pred.kind == "labels" else g["scores"])
        dtype = None if pred.kind == "labels" else np.float32  # labels as stored
        for rows, pending in chunks.read_ahead(chunk_rows or chunks.step, dtype):
            with self._reading(f"prediction {pred.id}"):
                block = pending.result()
            yield rows, block

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
    """Open (``r``, ``a``) or create (``a``, ``w``) a prediction store at a path or fsspec URL.

    URLs (``s3://bucket/ee.zarr``, ``memory://ee.zarr``) go through fsspec; ``file://`` URLs are
    plain paths. ``a`` never overwrites: it creates a store only where none exists.
    """
    if mode not in ("r", "a", "w"):
        raise StoreError(f"unknown store mode {mode!r}; use r, a or w")
    spath = store_location(path)
    is_url = "://" in spath
    if not is_url and Path(spath).exists() and not Path(spath).is_dir():
        raise StoreError(f"{spath} is a file, not a prediction store; choose another path")
    try:
        if mode == "r" or (mode == "a" and _exists(spath, is_url)):
            return _open_existing(spath, mode)
        # "w-" for ``a``: a store created meanwhile by another process is opened, not wiped
        group = zarr.open_group(store=spath, mode="w" if mode == "w" else "w-")
    except FileExistsError:
        return _open_existing(spath, mode)
    except OSError as exc:
        if not is_url:
            raise
        raise StoreError(
            f"cannot reach store {spath} ({type(exc).__name__}: {exc}); "
            "check the URL, that the bucket exists, and the credentials"
        ) from None
    group.attrs.update({"ee": {"format": FORMAT, "version": VERSION}})
    return PredictionStore(group, spath, mode)


def store_location(path: str | Path) -> str:
    """The store's location as ``open_store`` uses it: a local path or an fsspec URL.

    ``file://`` URLs become paths, so a local store behaves the same however it is named
    (atomic local locks, plain existence checks); a URL's trailing slash is dropped, so one store
    has one name (its locks live beside it under that name).
    """
    spath = str(path)
    if spath.startswith("file://"):
        return spath.removeprefix("file://") or "."
    if "://" in spath:
        _filesystem(spath)  # an unknown protocol or a missing driver is a clear error here
        return spath.rstrip("/")
    return spath


def _filesystem(url: str) -> tuple[Any, str]:
    """fsspec's filesystem and in-filesystem path of ``url``, or a StoreError naming the fix."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        hint = "pip install 'ensemble-engine[s3]'" if url.startswith("s3") else "install it"
        raise StoreError(f"store URL {url} needs a filesystem driver ({exc}); {hint}") from None
    except ValueError as exc:
        raise StoreError(
            f"store URL {url}: {exc}; use a path or an fsspec URL such as s3://bucket/ee.zarr"
        ) from None


def _open_existing(spath: str, mode: str) -> PredictionStore:
    try:
        group = zarr.open_group(store=spath, mode="r" if mode == "r" else "r+")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise StoreError(
            f"no prediction store at {spath}; create one with "
            "`ee store init STORE --data DIR` or `ee produce`"
        ) from None
    except ValueError as exc:  # zarr.json that is not JSON (or not UTF-8)
        raise StoreError(
            f"store {spath}: its root metadata (zarr.json) is damaged ({type(exc).__name__}); "
            "see `ee validate STORE`, or restore it from a copy"
        ) from None
    _check_version(group, spath)
    return PredictionStore(group, spath, mode)


def _exists(spath: str, is_url: bool) -> bool:
    """Whether a zarr group is at ``spath``; a remote error is raised, never read as "absent"."""
    if not is_url:
        return (Path(spath) / "zarr.json").exists()
    fs, root = _filesystem(spath)
    fs.invalidate_cache(root)  # another process may have created it since this one listed
    return bool(fs.exists(f"{root}/zarr.json"))


def _check_version(group: zarr.Group, spath: str) -> None:
    info = group.attrs.get("ee")
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise StoreError(
            f"{spath} is a zarr group but not an ee prediction store "
            "(root attrs lack ee.format); point at a store written by ee"
        )
    version = info.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StoreError(
            f"store {spath} has an invalid format version {version!r} in its root attrs; "
            "it is damaged: re-create the store"
        )
    if version > VERSION:
        raise FormatVersionError(
            f"store {spath} uses format version {version}, newer than this ee reads ({VERSION}); "
            "upgrade ensemble-engine"
        )
