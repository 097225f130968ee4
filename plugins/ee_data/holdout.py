"""Stratified hold-out splits, and train+val merged for a final fit.

The stratified split itself is generic and lives in the core (``ensemble_engine.holdout``,
where the store's held-out fusion split of ``ee store init --holdout`` is made); this module
keeps the names ``ee_data`` has always offered.
"""

from __future__ import annotations

from ensemble_engine import DataError, DatasetSource, Sample, holdout_split, merged_samples

__all__ = ["holdout_split", "merge_train_val"]


def merge_train_val(
    source: DatasetSource, holdout_fraction: float, seed: int
) -> dict[str, list[Sample]]:
    """New ``train`` and ``val`` sample lists from the source's train and val merged.

    Sample ids are prefixed with their original split (``train/3/x.png``, ``val/3/y.png``) so
    they stay unique in the merged set and still say where each image came from. A source
    without a val split merges train alone.
    """
    splits = tuple(s for s in ("train", "val") if s in source.split_names())
    if "train" not in splits:
        raise DataError(f"{source.root} has no train split to merge; add train/<class>/ folders")
    kept, held = holdout_split(merged_samples(source, splits), holdout_fraction, seed)
    return {"train": kept, "val": held}
