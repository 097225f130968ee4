"""``ee validate``: check a store against the format v1 spec, listing every problem found."""

from __future__ import annotations

import jsonschema
import numpy as np
import zarr

from .errors import StoreError
from .schemas import load_schema
from .store import FORMAT, VERSION, check_name, split_fingerprint


def _schema_problems(where: str, attrs: dict, schema_name: str) -> list[str]:
    validator = jsonschema.Draft202012Validator(load_schema(schema_name))
    return [
        f"{where}: attrs {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in validator.iter_errors(attrs)
    ]


def validate_store(path: str) -> list[str]:
    """Every problem in the store at ``path`` as one line each; an empty list means valid."""
    try:
        root = zarr.open_group(store=str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - any failure to open is the one problem to report
        return [f"cannot open as a zarr group ({type(exc).__name__}: {exc})"]
    attrs = root.attrs.asdict()
    info = attrs.get("ee")
    if (
        isinstance(info, dict)
        and isinstance(info.get("version"), int)
        and info["version"] > VERSION
    ):
        return [f"format version {info['version']} is newer than this reader ({VERSION})"]
    problems = _schema_problems("root", attrs, "store-root")
    if isinstance(info, dict) and info.get("format") != FORMAT:
        return problems
    classes = [str(c) for c in attrs.get("classes", [])]
    splits = _check_splits(root, len(classes), problems)
    if "predictions" in root:
        for name in sorted(root["predictions"].group_keys()):
            for split in sorted(root[f"predictions/{name}"].group_keys()):
                _check_prediction(root, name, split, classes, splits, problems)
    return problems


def _check_splits(root: zarr.Group, n_classes: int, problems: list[str]) -> dict[str, tuple]:
    splits: dict[str, tuple] = {}
    if "splits" not in root:
        return splits
    for split in sorted(root["splits"].group_keys()):
        where = f"splits/{split}"
        g = root[where]
        problems += _schema_problems(where, g.attrs.asdict(), "split")
        if "sample_id" not in g or "label" not in g:
            problems.append(f"{where}: missing array sample_id or label")
            continue
        ids = [str(x) for x in g["sample_id"][:]]
        labels = np.asarray(g["label"][:])
        if g["label"].dtype != np.dtype("int32") or labels.shape != (len(ids),):
            problems.append(
                f"{where}: label must be int32 [{len(ids)}], is {g['label'].dtype} "
                f"{list(labels.shape)}"
            )
        elif labels.size and (labels.min() < -1 or labels.max() >= n_classes):
            problems.append(f"{where}: labels outside -1..{n_classes - 1}")
        fp = split_fingerprint(ids)
        if g.attrs.get("fingerprint") != fp:
            problems.append(
                f"{where}: fingerprint {g.attrs.get('fingerprint')} does not match its "
                f"sample ids ({fp})"
            )
        splits[split] = (len(ids), fp)
    return splits


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
    g = root[where]
    attrs = g.attrs.asdict()
    if attrs.get("complete") is not True:
        return  # an unfinished write: invisible to readers, not an error
    problems += _schema_problems(where, attrs, "prediction")
    if attrs.get("split") != split:
        problems.append(f"{where}: attrs split {attrs.get('split')!r} differs from its path")
    if split not in splits:
        problems.append(f"{where}: its split {split!r} is not registered under splits/")
        return
    n, fp = splits[split]
    if attrs.get("split_fingerprint") != fp:
        problems.append(
            f"{where}: split_fingerprint {attrs.get('split_fingerprint')} differs from "
            f"split {split!r} ({fp})"
        )
    k = len(attrs.get("classes") or classes)
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
