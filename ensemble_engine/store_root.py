"""The store's root and its splits: the class space and the sample lists predictions align to.

``StoreRoot`` is the base of ``PredictionStore`` (``store.py``): it holds the root group, turns
zarr's errors on damaged metadata into one-line ``StoreError``\\ s, and reads and registers splits.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import zarr
from zarr import AsyncArray, AsyncGroup
from zarr.codecs import Crc32cCodec

from .errors import AlignmentError, StoreError
from .holdout import HoldoutRecord
from .local_nodes import WRITE_EMPTY
from .locks import StoreLock
from .records import (
    Split,
    SplitHeader,
    check_name,
    short_list,
    split_fingerprint,
    valid_name,
)
from .zarr_internals import async_group, sync

_REBUILD = "rebuild the store with `ee store init`"


async def _split_nodes(root: AsyncGroup, name: str, read_labels: bool) -> tuple[Any, list, Any]:
    """(``splits/<name>``, [its ``sample_id``, ``label``], the labels or None); None for what
    is missing. The labels are read only when asked and the ``label`` array is there."""

    async def get(group: AsyncGroup, key: str) -> Any:
        try:
            return await group.getitem(key)
        except KeyError:
            return None

    g = await get(root, f"splits/{name}")
    if not isinstance(g, AsyncGroup):
        return g, [None, None], None
    arrays = [await get(g, key) for key in ("sample_id", "label")]
    labels = None
    if read_labels and isinstance(arrays[1], AsyncArray) and len(arrays[1].shape) == 1:
        labels = await arrays[1].getitem(slice(None))
    return g, arrays, labels


class StoreRoot:
    """A zarr v3 group (a path or an fsspec URL) with ee's root attrs and ``splits/``."""

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
        # zarr's own are ValueErrors; a codec's on a broken chunk (zstd's) can be RuntimeErrors
        except (KeyError, ValueError, IndexError, TypeError, RuntimeError) as exc:
            raise self._damaged(what, f"{type(exc).__name__}: {exc}", fix) from None

    def lock(self, key: str) -> StoreLock:
        """An advisory lock on ``key`` in this store (see ``ensemble_engine.locks``)."""
        return StoreLock(self.path, key)

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
                f"store {self.path} holds classes {short_list(current)}, "
                f"not {short_list(classes)}: use a separate store for a different class space"
            )
        if not current:
            update: dict[str, Any] = {"classes": classes}
            if class_names is not None:
                update["class_names"] = [str(n) for n in class_names]
            self.group.attrs.update(update)

    def holdout_record(self) -> HoldoutRecord | None:
        """How the store's held-out fusion split was drawn (``ee store init --holdout``), or
        None where it has none (see ``ensemble_engine.holdout``)."""
        attrs = self.group.attrs.get("holdout")
        if attrs is None:
            return None
        try:
            return HoldoutRecord.from_attrs(attrs)
        except ValueError as exc:
            raise self._damaged(
                "the root's holdout record", str(exc), "re-create the store"
            ) from None

    def set_holdout(self, record: HoldoutRecord) -> None:
        """Record ``record``; the same one again is a no-op, another is an ``AlignmentError``."""
        with self.lock("meta"):
            self.group = zarr.open_group(store=self.group.store, mode="r+")  # see other writers
            self.check_holdout(record)
            if self.holdout_record() is None:
                self.group.attrs.update({"holdout": record.to_attrs()})

    def check_holdout(self, record: HoldoutRecord | None) -> None:
        """``AlignmentError`` where the store holds a held-out split drawn otherwise."""
        current = self.holdout_record()
        if current is not None and record is not None and current != record:
            raise AlignmentError(
                f"store {self.path} holds a held-out split drawn with {current.describe()}, "
                f"not {record.describe()}: give --holdout {current.fraction:g} --holdout-seed "
                f"{current.seed}, or use another store"
            )

    # --- splits -----------------------------------------------------------------------------

    def split_names(self) -> list[str]:
        with self._reading("the splits group", _REBUILD):
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
        checked = {  # every chunk, checked; the dimension xarray names
            "compressors": [Crc32cCodec()], "config": WRITE_EMPTY, "dimension_names": ("sample",),
        }  # fmt: skip
        sid = g.create_array(
            "sample_id", shape=(len(ids),), dtype=str, chunks=(len(ids),), **checked
        )
        sid[:] = np.array(ids, dtype=np.dtypes.StringDType())
        arr = g.create_array(
            "label", shape=(len(ids),), dtype="int32", chunks=(len(ids),), **checked
        )
        arr[:] = lab
        g.attrs.update({"fingerprint": fp, "n": len(ids)})
        return fp

    def _split_arrays(
        self, name: str, *, read_labels: bool = False
    ) -> tuple[zarr.Array, zarr.Array, str, np.ndarray | None]:
        """The split's ``sample_id`` and ``label`` arrays (metadata only), its fingerprint, and
        with ``read_labels`` the labels themselves.

        The lookups (and the labels' read) run as one call into zarr's event loop: each crossing
        costs about a millisecond, and a writer and every read check a split.
        """
        what = f"split {name}"
        with self._reading(what, _REBUILD):
            g, arrays, labels = (
                sync(_split_nodes(async_group(self.group), name, read_labels))
                if valid_name(name)
                else (None, [None, None], None)
            )
            if not isinstance(g, AsyncGroup):
                known = ", ".join(self.split_names()) or "none"
                raise StoreError(
                    f"store {self.path} has no split {name!r} (splits: {known}); "
                    "register it with `ee store init STORE --data DIR`"
                )
            fingerprint = g.attrs.get("fingerprint")
        for key, arr in zip(("sample_id", "label"), arrays, strict=True):
            if not isinstance(arr, AsyncArray):
                raise self._damaged(what, f"no {key} array", _REBUILD)
        if not isinstance(fingerprint, str):
            raise self._damaged(what, "no fingerprint in its attrs", _REBUILD)
        ids, lab = zarr.Array(arrays[0]), zarr.Array(arrays[1])
        if len(ids.shape) != 1 or tuple(lab.shape) != tuple(ids.shape):
            problem = f"label of shape {list(lab.shape)}, sample_id of {list(ids.shape)}"
            raise self._damaged(what, problem, _REBUILD)
        return ids, lab, fingerprint, None if labels is None else np.asarray(labels)

    def split_header(self, name: str) -> SplitHeader:
        """The split's labels and fingerprint, without reading its sample ids."""
        _, _, fingerprint, labels = self._split_arrays(name, read_labels=True)
        assert labels is not None
        return SplitHeader(name, labels, fingerprint)

    def split(self, name: str) -> Split:
        """The split with its sample ids (see ``split_header`` where the ids are not needed)."""
        ids_arr, labels_arr, fingerprint, _ = self._split_arrays(name)
        with self._reading(f"split {name}", _REBUILD):
            ids = np.array([str(x) for x in ids_arr[:]], dtype=object)
            labels = np.asarray(labels_arr[:])
        return Split(name, ids, labels, fingerprint)
