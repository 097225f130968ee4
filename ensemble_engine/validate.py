"""``ee validate``: check a store against the format v1 spec, listing every problem found.

Validation never raises on a damaged store: members are found from the store's listing (so a
member whose metadata is not JSON is still named), and whatever cannot be read becomes one
problem for that member while the rest is still checked.

Every array must have all its chunks (one listing of its keys: cheap, done always); ``deep``
also reads every chunk of every prediction, which verifies its CRC32C checksum. What an
interrupted replace left (``staging.py``) is not a problem but a warning: readers ignore it and
the next write of that prediction finishes or removes it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import zarr

from .chunk_files import DamagedChunk
from .chunks import RowChunks
from .errors import StoreError
from .schemas import load_schema
from .staging import leftover_of
from .store import FORMAT, VERSION, check_name, split_fingerprint
from .zarr_internals import sync

_REDO = "re-create the prediction: re-import it, or re-run what wrote it with --force"
_REBUILD = "rebuild the store with `ee store init`"


def _schema_problems(where: str, attrs: dict, schema_name: str) -> list[str]:
    validator = jsonschema.Draft202012Validator(load_schema(schema_name))
    return [
        f"{where}: attrs {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in validator.iter_errors(attrs)
    ]


def _unreadable(exc: Exception) -> str:
    return f"cannot be read ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"


def _guarded(where: str, problems: list[str], check: Callable[..., Any], *args: Any) -> Any:
    """Run one member's check; damage it did not foresee is one problem, not a crash."""
    try:
        return check(*args)
    except Exception as exc:  # noqa: BLE001 - validation reports, it never raises
        problems.append(f"{where}: {_unreadable(exc)}")
        return None


def _members(root: zarr.Group, path: str, hidden: bool = False) -> list[str]:
    """Names under ``path`` from the store's listing, without reading their metadata; with
    ``hidden``, only the names starting with a dot (a replace's staging) instead."""

    async def listing() -> list[str]:
        return [key async for key in root.store.list_dir(path)]

    keys = [k for k in sync(listing()) if k != "zarr.json"]
    return sorted(k for k in keys if k.startswith(".") == hidden)


def _chunk_keys(arr: zarr.Array) -> list[str]:
    grid = [range(-(-s // c)) for s, c in zip(arr.shape, arr.chunks, strict=True)]
    return [arr.metadata.encode_chunk_key(idx) for idx in itertools.product(*grid)]


def _missing_chunks(arr: zarr.Array, want: list[str]) -> list[str]:
    """The keys of ``want`` (chunks of ``arr``) that are not stored (ee writes every chunk)."""
    prefix = f"{arr.store_path.path}/"

    async def listing() -> set[str]:
        return {k.removeprefix(prefix) async for k in arr.store_path.store.list_prefix(prefix)}

    stored = sync(listing())
    return [k for k in want if k not in stored]


def _chunk_problems(where: str, arr: zarr.Array, fix: str, deep: bool) -> list[str]:
    """One line for missing chunks of ``arr`` and (``deep``) one for those that fail to read."""
    want = _chunk_keys(arr)
    missing = _missing_chunks(arr, want)
    if missing:
        return [f"{where}: {len(missing)} of {len(want)} chunks missing ({_first(missing)}); {fix}"]
    if arr.ndim == 0 or np.dtype(arr.dtype).kind not in "iuf":
        return []
    rows = RowChunks(arr)
    damaged = []
    for c in range(rows.chunk_count):
        try:
            if deep:
                rows.read(c * rows.step, min(rows.n, (c + 1) * rows.step))
            elif rows.folder is not None:  # a local chunk file's size costs one stat
                rows.check_size(c)
        except DamagedChunk as exc:
            damaged.append(f"{exc.key}: {exc.problem}")
    if not damaged:
        return []
    return [f"{where}: {len(damaged)} damaged chunk(s) ({_first(damaged)}); {fix}"]


def _first(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f", … {len(items) - n} more" if len(items) > n else "")


def _leftovers(root: zarr.Group, name: str, warnings: list[str]) -> None:
    for member in _members(root, f"predictions/{name}", hidden=True):
        split = leftover_of(member)
        if split is None:
            continue
        shown = f"predictions/{name}/{split}" in root
        warnings.append(
            f"predictions/{name}/{member}: left by an interrupted replace of {name}/{split}; "
            "readers ignore it"
            + ("" if shown else f", and {name}/{split} is missing until then")
            + f"; the next write of {name}/{split} finishes or removes it"
        )


def _group(root: zarr.Group, path: str) -> zarr.Group:
    node = root[path]
    if not isinstance(node, zarr.Group):
        raise TypeError(f"{path} is an array, not a group")
    return node


def validate_store(
    path: str, *, deep: bool = False, warnings: list[str] | None = None
) -> list[str]:
    """Every problem in the store at ``path`` as one line each; an empty list means valid.

    ``deep`` reads every chunk of every prediction (checksums verified); ``warnings``, if
    given, receives what is not a problem but worth saying (an interrupted replace's leftovers).
    """
    try:
        spath = str(path)  # a path as a Path: zarr reads text with "::" as a chained fsspec URL
        root = zarr.open_group(store=spath if "://" in spath else Path(spath), mode="r")
    except Exception as exc:  # noqa: BLE001 - any failure to open is the one problem to report
        return [f"cannot open as a zarr group ({type(exc).__name__}: {exc})"]
    problems: list[str] = []
    notes = [] if warnings is None else warnings
    _guarded("root", problems, _check_store, root, problems, deep, notes)
    return problems


def _check_store(root: zarr.Group, problems: list[str], deep: bool, warnings: list[str]) -> None:
    attrs = root.attrs.asdict()
    info = attrs.get("ee")
    if (
        isinstance(info, dict)
        and isinstance(info.get("version"), int)
        and info["version"] > VERSION
    ):
        problems.append(f"format version {info['version']} is newer than this reader ({VERSION})")
        return
    problems += _schema_problems("root", attrs, "store-root")
    if isinstance(info, dict) and info.get("format") != FORMAT:
        return
    raw = attrs.get("classes", [])
    classes = [str(c) for c in raw] if isinstance(raw, list) else []
    splits = _check_splits(root, len(classes), problems)
    for name in _members(root, "predictions"):
        _guarded(f"predictions/{name}", problems, _leftovers, root, name, warnings)
        for split in (
            _guarded(f"predictions/{name}", problems, _members, root, f"predictions/{name}") or []
        ):
            where = f"predictions/{name}/{split}"
            _guarded(
                where, problems, _check_prediction, root, name, split, classes, splits, problems,
                deep,
            )  # fmt: skip


def _check_splits(root: zarr.Group, n_classes: int, problems: list[str]) -> dict[str, tuple | None]:
    splits: dict[str, tuple | None] = {}
    for split in _members(root, "splits"):
        where = f"splits/{split}"
        _guarded(where, problems, _check_split, root, split, n_classes, splits, problems)
        splits.setdefault(split, None)  # reported above: its predictions are not checked against it
    return splits


def _check_split(
    root: zarr.Group,
    split: str,
    n_classes: int,
    splits: dict[str, tuple | None],
    problems: list[str],
) -> None:
    where = f"splits/{split}"
    g = _group(root, where)
    problems += _schema_problems(where, g.attrs.asdict(), "split")
    if "sample_id" not in g or "label" not in g:
        problems.append(f"{where}: missing array sample_id or label")
        return
    for key in ("sample_id", "label"):
        missing = _chunk_problems(f"{where}/{key}", g[key], _REBUILD, deep=False)
        if missing:
            problems += missing
            return
    ids = [str(x) for x in g["sample_id"][:]]
    labels = np.asarray(g["label"][:])
    if g["label"].dtype != np.dtype("int32") or labels.shape != (len(ids),):
        problems.append(
            f"{where}: label must be int32 [{len(ids)}], is {g['label'].dtype} {list(labels.shape)}"
        )
    elif (
        labels.dtype.kind in "iu"
        and labels.size
        and (labels.min() < -1 or labels.max() >= n_classes)
    ):
        problems.append(f"{where}: labels outside -1..{n_classes - 1}")
    fp = split_fingerprint(ids)
    if g.attrs.get("fingerprint") != fp:
        problems.append(
            f"{where}: fingerprint {g.attrs.get('fingerprint')} does not match its "
            f"sample ids ({fp})"
        )
    splits[split] = (len(ids), fp)


def _check_prediction(
    root: zarr.Group,
    name: str,
    split: str,
    classes: list[str],
    splits: dict[str, tuple],
    problems: list[str],
    deep: bool = False,
) -> None:
    where = f"predictions/{name}/{split}"
    try:
        check_name(name, "prediction name")
    except StoreError as exc:
        problems.append(f"{where}: {exc}")
    g = _group(root, where)
    attrs = g.attrs.asdict()
    if attrs.get("complete") is not True:
        return  # an unfinished write: invisible to readers, not an error
    problems += _schema_problems(where, attrs, "prediction")
    if attrs.get("split") != split:
        problems.append(f"{where}: attrs split {attrs.get('split')!r} differs from its path")
    if split not in splits:
        problems.append(f"{where}: its split {split!r} is not registered under splits/")
        return
    if splits[split] is None:
        return
    n, fp = splits[split]
    if attrs.get("split_fingerprint") != fp:
        problems.append(
            f"{where}: split_fingerprint {attrs.get('split_fingerprint')} differs from "
            f"split {split!r} ({fp})"
        )
    own = attrs.get("classes")
    k = len(own) if isinstance(own, list) and own else len(classes)
    if attrs.get("kind") == "labels":
        _check_array(g, "label", (n,), ("int32",), where, problems, deep)
        if "votes" in g:
            dtypes = ("float32", "float16", "int32")
            _check_array(g, "votes", (n, k), dtypes, where, problems, deep)
    else:
        _check_array(g, "scores", (n, k), ("float16", "float32"), where, problems, deep)


def _check_array(
    g: zarr.Group,
    key: str,
    shape: tuple,
    dtypes: tuple,
    where: str,
    problems: list[str],
    deep: bool = False,
) -> None:
    if key not in g:
        problems.append(f"{where}: missing array {key!r}")
        return
    arr = g[key]
    if tuple(arr.shape) != shape:
        problems.append(f"{where}/{key}: shape {list(arr.shape)}, expected {list(shape)}")
    elif str(arr.dtype) not in dtypes:
        problems.append(f"{where}/{key}: dtype {arr.dtype}, expected one of {', '.join(dtypes)}")
    else:
        problems += _chunk_problems(f"{where}/{key}", arr, _REDO, deep)
