"""``ee validate``: check a store against the format v1 spec, listing every problem found.

Validation never raises on a damaged store: members are found from the store's listing (so a
member whose metadata is not JSON is still named), and whatever cannot be read becomes one
problem for that member while the rest is still checked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonschema
import numpy as np
import zarr
from zarr.core.sync import sync

from .errors import StoreError
from .schemas import load_schema
from .store import FORMAT, VERSION, check_name, split_fingerprint


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


def _members(root: zarr.Group, path: str) -> list[str]:
    """Names under ``path`` from the store's listing, without reading their metadata."""

    async def listing() -> list[str]:
        return [key async for key in root.store.list_dir(path)]

    return sorted(k for k in sync(listing()) if k != "zarr.json" and not k.startswith("."))


def _group(root: zarr.Group, path: str) -> zarr.Group:
    node = root[path]
    if not isinstance(node, zarr.Group):
        raise TypeError(f"{path} is an array, not a group")
    return node


def validate_store(path: str) -> list[str]:
    """Every problem in the store at ``path`` as one line each; an empty list means valid."""
    try:
        root = zarr.open_group(store=str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - any failure to open is the one problem to report
        return [f"cannot open as a zarr group ({type(exc).__name__}: {exc})"]
    problems: list[str] = []
    _guarded("root", problems, _check_store, root, problems)
    return problems


def _check_store(root: zarr.Group, problems: list[str]) -> None:
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
        for split in (
            _guarded(f"predictions/{name}", problems, _members, root, f"predictions/{name}") or []
        ):
            where = f"predictions/{name}/{split}"
            _guarded(
                where, problems, _check_prediction, root, name, split, classes, splits, problems
            )


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
        _check_array(g, "label", (n,), ("int32",), where, problems)
        if "votes" in g:
            _check_array(g, "votes", (n, k), ("float32", "float16", "int32"), where, problems)
    else:
        _check_array(g, "scores", (n, k), ("float16", "float32"), where, problems)


def _check_array(
    g: zarr.Group, key: str, shape: tuple, dtypes: tuple, where: str, problems: list[str]
) -> None:
    if key not in g:
        problems.append(f"{where}: missing array {key!r}")
        return
    arr = g[key]
    if tuple(arr.shape) != shape:
        problems.append(f"{where}/{key}: shape {list(arr.shape)}, expected {list(shape)}")
    if str(arr.dtype) not in dtypes:
        problems.append(f"{where}/{key}: dtype {arr.dtype}, expected one of {', '.join(dtypes)}")
