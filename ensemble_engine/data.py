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


def register_splits(store, source: DatasetSource) -> dict[str, str]:
    """Record the source's classes and every split in ``store``; returns split → fingerprint.

    Registering the splits before any producer runs is what makes every producer's predictions
    align row for row.
    """
    store.set_classes(source.classes)
    out = {}
    for split in source.split_names():
        samples = source.samples(split)
        out[split] = store.add_split(
            split, [s.sample_id for s in samples], [s.label for s in samples]
        )
    return out
