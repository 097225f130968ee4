"""The dataset contract: what a dataset plugin hands to producers and to ``ee store init``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

UNKNOWN_LABEL = -1


@dataclass(frozen=True)
class Sample:
    """One image: a stable id (path relative to its split folder), where it is, its class index."""

    sample_id: str
    path: Path
    label: int = UNKNOWN_LABEL


@runtime_checkable
class DatasetSource(Protocol):
    """A labelled image collection split into named splits (``train``, ``val``, ``test``…).

    ``classes`` are the class ids in index order (sorted folder names for image folders).
    ``samples(split)`` is deterministic: the same folder gives the same order every time.
    """

    root: Path
    classes: list[str]

    def split_names(self) -> list[str]: ...

    def samples(self, split: str) -> list[Sample]: ...


def open_dataset(root: Path | str | None, *, name: str | None = None, **params) -> DatasetSource:
    """A dataset through its plugin: ``root`` None means the embedded digits data (cached)."""
    from .plugins import get_host

    datasets = get_host().datasets
    if root is None:
        return datasets.get(name or "digits").factory(root=None, **params)
    return datasets.get(name or "imagefolder").factory(Path(root), **params)


def register_splits(store, source: DatasetSource, *, replace: bool = False) -> dict[str, str]:
    """Record the source's classes and every split in ``store``; returns split → fingerprint.

    Registering the splits before any producer runs is what makes every producer's predictions
    align row for row. Every split is checked against the store before anything is written
    (``check_splits``): a refused registration leaves the store as it was. With ``replace``, a
    split whose samples changed (images fixed, added or removed) is registered anew, unless
    predictions were made on its old samples.
    """
    samples = {split: source.samples(split) for split in source.split_names()}
    # Checked and written under one lock: a split another process is registering has its group
    # before its arrays, so reading it mid-way would call it damaged (two producers starting on
    # a new store at once).
    with store.lock("splits"):
        changed = check_splits(store, source, samples, replace=replace)
        store.set_classes(source.classes)
        out = {}
        for split, rows in samples.items():
            out[split] = store.add_split(
                split,
                [s.sample_id for s in rows],
                [s.label for s in rows],
                replace=split in changed,
            )
    return out


def check_splits(
    store, source: DatasetSource, samples: dict[str, list[Sample]], *, replace: bool = False
) -> list[str]:
    """The registered splits whose samples differ from ``samples`` (split → the source's);
    ``AlignmentError`` naming the fix unless ``replace`` and no prediction was made on them."""
    from .errors import AlignmentError
    from .records import split_fingerprint

    if store.classes and store.classes != source.classes:
        store.set_classes(source.classes)  # refuses, naming both class lists
    changed = []
    registered = store.split_names()
    for split, rows in samples.items():
        if split not in registered:
            continue
        old = store.split_header(split).fingerprint
        new = split_fingerprint([s.sample_id for s in rows])
        if old == new:
            continue
        made = sorted({p.name for p in store.list(split=split)})
        what = (
            f"split {split!r} in {store.path} holds other samples than {source.root} "
            f"(fingerprint {old}, the folder's {new})"
        )
        if made:
            shown = ", ".join(made[:5]) + (f" and {len(made) - 5} more" if len(made) > 5 else "")
            raise AlignmentError(
                f"{what}, and predictions {shown} were made on the store's samples: use another "
                "store for this data (re-registering the split would orphan them; `ee predict "
                "RUN --data DIR --store NEW` writes a trained run's predictions into a new one)"
            )
        if not replace:
            raise AlignmentError(
                f"{what}: re-register the folder's splits with `ee store init {store.path} "
                f"--data {source.root} --replace-splits`, or use another store"
            )
        changed.append(split)
    return changed
