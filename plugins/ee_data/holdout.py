"""Stratified hold-out splits, and train+val merged for a final fit.

A final fit trains on train and val together; early stopping and model selection still need a
labelled split the model has not seen, so a fresh one is held out of the merged set, per class
and by seed.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict

import numpy as np

from ensemble_engine.data import UNKNOWN_LABEL, DatasetSource, Sample
from ensemble_engine.errors import DataError


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
    if not 0.0 < fraction < 1.0:
        raise DataError(f"holdout fraction must lie strictly between 0 and 1, got {fraction}")
    if not isinstance(seed, int) or seed < 0:
        raise DataError(f"holdout seed must be a non-negative integer, got {seed!r}")
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


def merge_train_val(
    source: DatasetSource, holdout_fraction: float, seed: int
) -> dict[str, list[Sample]]:
    """New ``train`` and ``val`` sample lists from the source's train and val merged.

    Sample ids are prefixed with their original split (``train/3/x.png``, ``val/3/y.png``) so
    they stay unique in the merged set and still say where each image came from. A source
    without a val split merges train alone.
    """
    splits = [s for s in ("train", "val") if s in source.split_names()]
    if "train" not in splits:
        raise DataError(f"{source.root} has no train split to merge; add train/<class>/ folders")
    merged = [
        dataclasses.replace(sample, sample_id=f"{split}/{sample.sample_id}")
        for split in splits
        for sample in source.samples(split)
    ]
    kept, held = holdout_split(merged, holdout_fraction, seed)
    return {"train": kept, "val": held}
