"""The store's held-out fusion split: a stratified, seeded share of train+val.

The seed (VIPriors 2021) trained each model on train and val together and fused on a new
validation split held out of both. ``ee store init STORE --data DIR --holdout F`` registers it
as the split ``holdout``: ``F`` of every class of train+val, chosen by ``holdout_split`` with a
seed, with sample ids prefixed by their split (``train/3/x.png``, ``val/3/y.png``). The store's
root attrs record how (``HoldoutRecord``), so every producer draws the same rows again from the
data folder (``with_store_holdout``): it trains on train+val minus those rows, validates on
them, and predicts ``holdout`` and every split it did not train on (``HoldoutSource``). Graphs
then fit on it: ``ee combine GRAPH --fit holdout`` (apply: holdout and test).

The split is generic (class labels and a seed, no plugin knowledge), so it lives here in the
core; ``ee_data`` re-exports ``holdout_split`` for the callers it had.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from .data import UNKNOWN_LABEL, DatasetSource, Sample
from .errors import DataError

HOLDOUT_SPLIT = "holdout"
HOLDOUT_FROM = ("train", "val")
TRAIN_SPLIT = "train"


def holdout_split(
    samples: list[Sample], fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Split ``samples`` into ``(kept, held_out)``, holding out ``fraction`` of each class.

    Per class, ``round(n * fraction)`` samples are held out, but at least one and at most n - 1,
    so every class stays on both sides; a class with a single sample is an error. Which samples
    go is a seeded permutation of the class's samples in sample-id order, so the result depends
    only on the set of samples, the fraction and the seed, not on the input order. Both lists
    keep the input order.
    """
    check_holdout(fraction, seed)
    duplicates = [sid for sid, n in Counter(s.sample_id for s in samples).items() if n > 1]
    if duplicates:
        raise DataError(f"sample ids must be unique to hold some out; repeated: {duplicates[:5]}")
    if any(s.label == UNKNOWN_LABEL for s in samples):
        raise DataError("cannot stratify unlabelled samples; hold out from a labelled split")
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_class[sample.label].append(sample)
    single = sorted(label for label, members in by_class.items() if len(members) < 2)
    if single:
        raise DataError(
            f"class(es) {single} have a single sample and cannot be on both sides of a "
            "holdout; add samples to them"
        )
    held_ids: set[str] = set()
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda s: s.sample_id)
        n_held = min(max(round(len(members) * fraction), 1), len(members) - 1)
        order = np.random.default_rng([seed, label]).permutation(len(members))
        held_ids.update(members[i].sample_id for i in order[:n_held])
    kept = [s for s in samples if s.sample_id not in held_ids]
    held = [s for s in samples if s.sample_id in held_ids]
    return kept, held


def check_holdout(fraction: Any, seed: Any) -> None:
    """``DataError`` unless ``0 < fraction < 1`` and ``seed`` is a non-negative integer."""
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, int | float)
        or not math.isfinite(fraction)
        or not 0.0 < fraction < 1.0
    ):
        raise DataError(
            f"holdout fraction must lie strictly between 0 and 1, got {fraction}; e.g. 0.2"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"holdout seed must be a non-negative integer, got {seed!r}")


def merged_samples(source: DatasetSource, splits: tuple[str, ...]) -> list[Sample]:
    """The samples of ``splits`` in that order, ids prefixed with their split (``val/3/y.png``)
    so that they stay unique in the merged set and still say where each image came from."""
    return [
        dataclasses.replace(sample, sample_id=f"{split}/{sample.sample_id}")
        for split in splits
        for sample in source.samples(split)
    ]


@dataclass(frozen=True)
class HoldoutRecord:
    """How the store's held-out split was drawn: the root attr ``holdout`` of the store."""

    fraction: float
    seed: int = 0
    split: str = HOLDOUT_SPLIT
    sources: tuple[str, ...] = HOLDOUT_FROM

    def __post_init__(self) -> None:
        check_holdout(self.fraction, self.seed)

    def to_attrs(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "fraction": self.fraction,
            "seed": self.seed,
            "from": list(self.sources),
        }

    @classmethod
    def from_attrs(cls, attrs: Any) -> HoldoutRecord:
        """The record of a root attr; ``ValueError`` naming what is wrong with it."""
        keys = {"split", "fraction", "seed", "from"}
        if not isinstance(attrs, dict) or set(attrs) != keys:
            raise ValueError(f"holdout is not a mapping of {', '.join(sorted(keys))}")
        sources = attrs["from"]
        if attrs["split"] != HOLDOUT_SPLIT or sources != list(HOLDOUT_FROM):
            raise ValueError(f"holdout must be split {HOLDOUT_SPLIT!r} drawn from train and val")
        try:
            return cls(attrs["fraction"], attrs["seed"])
        except DataError as exc:
            raise ValueError(str(exc)) from None

    def describe(self) -> str:
        return f"fraction {self.fraction:g}, seed {self.seed}"


class HoldoutSource:
    """A ``DatasetSource`` with the store's held-out split added to a data folder's splits.

    ``samples(record.split)`` are the held-out rows of train+val (merged as ``merged_samples``
    names them); ``training_samples()`` gives ``(train+val minus them, them)``. Every other split
    is the wrapped source's own. ``trained_splits`` are the splits whose rows a model trained
    here has seen (train and val), which are therefore not predicted.
    """

    def __init__(self, source: DatasetSource, record: HoldoutRecord) -> None:
        known = source.split_names()
        missing = [s for s in record.sources if s not in known]
        if missing:
            raise DataError(
                f"{source.root} has no {' or '.join(missing)} split to draw the held-out fusion "
                f"split from (--holdout holds out of {' and '.join(record.sources)}): add "
                f"{missing[0]}/<class>/ folders, or use `ee produce --holdout F` without a store "
                "holdout"
            )
        if record.split in known:
            raise DataError(
                f"{source.root} has a split folder named {record.split!r}, the name of the "
                "store's held-out split: rename the folder"
            )
        self.source = source
        self.record = record
        self.root = source.root
        self.classes = source.classes
        self.trained_splits = record.sources
        self._drawn: tuple[list[Sample], list[Sample]] | None = None

    def __repr__(self) -> str:
        return f"HoldoutSource({self.source!r}, {self.record.describe()})"

    def split_names(self) -> list[str]:
        return [*self.source.split_names(), self.record.split]

    def samples(self, split: str) -> list[Sample]:
        if split == self.record.split:
            return list(self.training_samples()[1])
        return self.source.samples(split)

    def training_samples(self) -> tuple[list[Sample], list[Sample]]:
        """``(train+val minus the held-out rows, the held-out rows)``, drawn once."""
        if self._drawn is None:
            merged = merged_samples(self.source, self.record.sources)
            self._drawn = holdout_split(merged, self.record.fraction, self.record.seed)
        kept, held = self._drawn
        return list(kept), list(held)


def trained_splits(source: DatasetSource) -> tuple[str, ...]:
    """The splits a model trained on ``source`` has seen: train, and val under a holdout."""
    return source.trained_splits if isinstance(source, HoldoutSource) else (TRAIN_SPLIT,)


def with_store_holdout(source: DatasetSource, store: Any) -> DatasetSource:
    """``source`` with the store's held-out split, where the store records one (else as is)."""
    record = store.holdout_record()
    return source if record is None else HoldoutSource(source, record)
