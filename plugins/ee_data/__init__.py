"""Built-in dataset plugin: image folders (VIPriors layout or plain ImageFolder) and digits.

``imagefolder`` reads a folder tree; ``digits`` writes scikit-learn's digits as such a tree
(into a cache folder unless given a root) and reads it back, so everything runs without a
download.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ensemble_engine import Register, hookimpl, load_image

from .digits import digits_params, write_digits
from .holdout import holdout_split, merge_train_val
from .imagefolder import ImageFolderSource, SkippedFilesWarning

__all__ = [
    "ImageFolderSource",
    "SkippedFilesWarning",
    "default_digits_root",
    "holdout_split",
    "load_image",
    "merge_train_val",
    "open_dataset",
    "open_digits",
    "write_digits",
]

CACHE_ENV = "EE_CACHE_DIR"


def cache_dir() -> Path:
    """Where generated data lives: ``$EE_CACHE_DIR``, else ``~/.cache/ensemble-engine``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "ensemble-engine"


def default_digits_root(
    *, train_per_class: int = 50, val_per_class: int = 50, seed: int = 0, size: int = 32
) -> Path:
    """The cache folder of the digits tree with these parameters (one folder per parameter set)."""
    params = digits_params(
        train_per_class=train_per_class, val_per_class=val_per_class, seed=seed, size=size
    )
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / f"digits-{digest}"


def open_digits(
    root: Path | str | None = None,
    *,
    train_per_class: int = 50,
    val_per_class: int = 50,
    seed: int = 0,
    size: int = 32,
    strict: bool = False,
) -> ImageFolderSource:
    """The digits dataset: written at ``root`` (default: the cache) if not there yet, then read."""
    params = {
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "seed": seed,
        "size": size,
    }
    target = default_digits_root(**params) if root is None else Path(root)
    write_digits(target, **params)
    return ImageFolderSource(target, strict=strict)


def open_dataset(root: Path | str | None = None) -> ImageFolderSource:
    """The image folder at ``root``, or the cached digits dataset when ``root`` is None."""
    return open_digits() if root is None else ImageFolderSource(root)


@hookimpl
def register_datasets(register: Register) -> None:
    register(
        "imagefolder",
        ImageFolderSource,
        description="Image folders: train/<class>/, val/<class>/, test/imgs/ (VIPriors) "
        "or <class>/ (ImageFolder, one train split)",
    )
    register(
        "digits",
        open_digits,
        description="scikit-learn's 8×8 digits written as a VIPriors image tree (no download)",
    )


@hookimpl
def register_commands(cli) -> None:
    from .commands import data_group

    cli.add_command(data_group)
