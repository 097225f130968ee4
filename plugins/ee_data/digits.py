"""scikit-learn's digits written as an image tree: the dataset that needs no download.

``write_digits`` turns the 1,797 8×8 digits shipped inside scikit-learn into the VIPriors layout
that ``ImageFolderSource`` reads, so the whole engine (train, predict, fuse, export) runs end to
end on a laptop and in CI:

```
root/
  ee-digits.json            the parameters the tree was written with (idempotent re-runs)
  train/<class>/digit_00042.png
  val/<class>/digit_00007.png
  test/imgs/digit_00001.png  unlabelled, as in a challenge
  test/labels.csv            image,label for evaluation
```

Class folders are the digits "0".."9". Folder names are zero-padded to a common width so that
their sorted order (which defines the class index) is the numeric order; with ten classes the
width is one, so the names are simply "0".."9".
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ensemble_engine import DataError

MANIFEST = "ee-digits.json"
MANIFEST_FORMAT = "ee.digits"
MANIFEST_VERSION = 1
GREY_MAX = 16  # load_digits grey levels run 0..16


def image_name(index: int) -> str:
    """The stable file name of digit ``index`` (its row in ``load_digits()``)."""
    return f"digit_{index:05d}.png"


def class_folder_names(n_classes: int) -> list[str]:
    """Folder names for classes 0..n-1, zero-padded so that sorted order is numeric order."""
    width = len(str(n_classes - 1))
    return [f"{c:0{width}d}" for c in range(n_classes)]


def digits_params(
    *, train_per_class: int = 50, val_per_class: int = 50, seed: int = 0, size: int = 32
) -> dict[str, int]:
    """The checked parameters of a digits tree, as stored in its manifest."""
    params = {
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "seed": seed,
        "size": size,
    }
    for key, value in params.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise DataError(f"digits {key} must be an integer, got {value!r}")
    if train_per_class < 1 or val_per_class < 0:
        raise DataError("digits need train_per_class >= 1 and val_per_class >= 0; raise them")
    if seed < 0:
        raise DataError(f"digits seed must be >= 0, got {seed}; use a non-negative seed")
    if size < 8:
        raise DataError(f"digits size must be >= 8 (the images are 8×8), got {size}")
    return params


def plan_splits(target: np.ndarray, params: dict[str, int]) -> dict[str, list[int]]:
    """Row indices per split: per class a seeded permutation, cut into train, val, and test."""
    n_train, n_val = params["train_per_class"], params["val_per_class"]
    counts = np.bincount(target)
    short = [(c, int(n)) for c, n in enumerate(counts) if n < n_train + n_val]
    if short:
        c, n = short[0]
        raise DataError(
            f"digits class {c} has only {n} images but train_per_class + val_per_class = "
            f"{n_train + n_val}; lower them to at most {int(counts.min())} together"
        )
    plan: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for c in range(len(counts)):
        # One generator per class: a class's split does not depend on the other classes.
        rows = np.random.default_rng([params["seed"], c]).permutation(np.flatnonzero(target == c))
        plan["train"] += rows[:n_train].tolist()
        plan["val"] += rows[n_train : n_train + n_val].tolist()
        plan["test"] += rows[n_train + n_val :].tolist()
    return {split: sorted(rows) for split, rows in plan.items()}


def digit_image(pixels: np.ndarray, size: int) -> Image.Image:
    """One digit as an RGB image: grey 0..16 scaled to 0..255, nearest-neighbour upscaled.

    Nearest keeps the digit's own grey levels (no invented in-between values); RGB lets
    ImageNet-style backbones and normalisation apply unchanged.
    """
    grey = (pixels.reshape(8, 8).astype(np.int64) * 255 + GREY_MAX // 2) // GREY_MAX
    image = Image.fromarray(grey.astype(np.uint8))
    return image.resize((size, size), Image.Resampling.NEAREST).convert("RGB")


def write_digits(
    root: Path | str,
    *,
    train_per_class: int = 50,
    val_per_class: int = 50,
    seed: int = 0,
    size: int = 32,
    force: bool = False,
) -> dict[str, Any]:
    """Write the digits tree at ``root`` and return a summary (root, classes, counts, params).

    Idempotent: a tree already written with the same parameters is left as it is
    (``written: False``). A tree written with other parameters is replaced only with ``force``;
    a non-empty folder that holds no digits tree is never touched. The tree is built in a
    temporary folder next to ``root`` and renamed into place, so a reader never sees half a tree.
    """
    params = digits_params(
        train_per_class=train_per_class, val_per_class=val_per_class, seed=seed, size=size
    )
    root = Path(root)
    existing = _existing_tree(root)
    if existing is not None:
        if existing.get("params") == params and not force:
            return _summary(root, existing, written=False)
        if not force:
            raise DataError(
                f"{root} holds a digits tree written with {existing.get('params')}, not {params}; "
                "pass --force to rewrite it or choose another folder"
            )

    from sklearn.datasets import load_digits

    digits = load_digits()
    target = digits.target.astype(np.int64)
    plan = plan_splits(target, params)
    classes = class_folder_names(len(digits.target_names))
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "params": params,
        "classes": classes,
        "counts": {split: len(rows) for split, rows in plan.items() if rows},
    }
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        _write_tree(tmp, digits.data, target, classes, plan, size)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        written = _move_into_place(tmp, root, params, replace=existing is not None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _summary(root, manifest, written=written)


def _write_tree(
    tmp: Path,
    data: np.ndarray,
    target: np.ndarray,
    classes: list[str],
    plan: dict[str, list[int]],
    size: int,
) -> None:
    for split in ("train", "val"):
        for row in plan[split]:
            folder = tmp / split / classes[target[row]]
            folder.mkdir(parents=True, exist_ok=True)
            digit_image(data[row], size).save(folder / image_name(row))
    if not plan["test"]:
        return
    imgs = tmp / "test" / "imgs"
    imgs.mkdir(parents=True)
    with (tmp / "test" / "labels.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "label"])
        for row in plan["test"]:
            digit_image(data[row], size).save(imgs / image_name(row))
            writer.writerow([image_name(row), classes[target[row]]])


def _existing_tree(root: Path) -> dict[str, Any] | None:
    """The manifest of the digits tree at ``root``; None if ``root`` is missing or empty."""
    if not root.exists():
        return None
    if not root.is_dir():
        raise DataError(f"{root} is a file, not a folder; choose a folder for the digits tree")
    if not any(root.iterdir()):
        return None
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise DataError(
            f"{root} is not empty and holds no digits tree; choose an empty or new folder"
        )
    try:
        found = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        found = None
    return found if isinstance(found, dict) else {"params": None}


def _move_into_place(tmp: Path, root: Path, params: dict[str, int], *, replace: bool) -> bool:
    """Rename ``tmp`` to ``root``; True if this call's tree is the one now in place."""
    if replace:
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        os.replace(root, old / root.name)
        os.replace(tmp, root)
        shutil.rmtree(old, ignore_errors=True)
        return True
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    try:
        os.rename(tmp, root)
        return True
    except OSError:
        # Another process wrote the same folder meanwhile: fine if it wrote the same tree.
        existing = _existing_tree(root)
        if existing is not None and existing.get("params") == params:
            return False
        raise


def _summary(root: Path, manifest: dict[str, Any], *, written: bool) -> dict[str, Any]:
    return {
        "root": str(root),
        "classes": list(manifest.get("classes", [])),
        "counts": dict(manifest.get("counts", {})),
        "params": dict(manifest.get("params") or {}),
        "written": written,
    }
