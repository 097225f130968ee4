"""Specialists: models trained on a few (weak) classes plus one ``__other__`` class.

The seed ensemble covered the classes its stage-2 vote got wrong most often with specialists:
each listed class is resampled to ``subset_per_class`` training images (drawn with replacement,
so a class of 50 images is seen ten times as often, each time with its own augmentation), and
every other class gives ``other_per_class`` random images that all become ``__other__``. The
specialist's class space is the subset, in the order listed, then ``__other__``.

Validation keeps every image of the validation samples, mapped the same way (listed classes keep
their class, the rest become ``__other__``), so the run's val top-1 is the accuracy of the
specialist's own task. Draws come from numpy generators seeded with the recipe's seed and the
class index: the same recipe always trains on the same list, whatever the order of the input.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from ensemble_engine import OTHER, DataError, Sample


def specialist_classes(subset: Sequence[str]) -> list[str]:
    """The specialist's class space: the subset in its order, then ``__other__``."""
    return [*subset, OTHER]


def check_subset(subset: Sequence[str], classes: Sequence[str]) -> None:
    """The subset must name known classes and leave at least one class for ``__other__``."""
    unknown = [c for c in subset if c not in classes]
    if unknown:
        shown = ", ".join(list(classes)[:10]) + (", …" if len(classes) > 10 else "")
        raise DataError(
            f"subset class(es) {', '.join(unknown)} are not classes of the data ({shown}); "
            "list class ids as the store names them (see `ee weak-classes`)"
        )
    if len(set(subset)) >= len(classes):
        raise DataError(
            f"the subset lists all {len(classes)} classes, so nothing is left for {OTHER}; "
            "list fewer classes"
        )


def subset_label_map(subset: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Data class index → specialist class index (listed position, else ``len(subset)``)."""
    position = {c: i for i, c in enumerate(subset)}
    return np.array([position.get(c, len(subset)) for c in classes], dtype=np.int64)


def map_to_subset(
    samples: Sequence[Sample], subset: Sequence[str], classes: Sequence[str]
) -> list[Sample]:
    """Every sample, relabelled into the specialist's class space (unknown labels stay)."""
    mapping = subset_label_map(subset, classes)
    return [
        dataclasses.replace(s, label=int(mapping[s.label])) if s.label >= 0 else s for s in samples
    ]


def specialist_training_samples(
    samples: Sequence[Sample],
    subset: Sequence[str],
    classes: Sequence[str],
    *,
    per_class: int,
    other_per_class: int,
    seed: int,
) -> list[Sample]:
    """The specialist's training list, relabelled: ``per_class`` images of each listed class
    (with replacement) and ``other_per_class`` of each other class (without replacement where
    the class has that many).

    The list holds ``len(subset) * per_class + (n_classes - len(subset)) * other_per_class``
    samples, grouped by class; the training loader shuffles them.
    """
    check_subset(subset, classes)
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for sample in sorted(samples, key=lambda s: s.sample_id):
        by_class[sample.label].append(sample)
    listed = {classes.index(c) for c in subset}
    empty = [classes[i] for i in sorted(listed) if not by_class[i]]
    if empty:
        raise DataError(
            f"subset class(es) {', '.join(empty)} have no training images; drop them from "
            "the subset or add images"
        )
    mapping = subset_label_map(subset, classes)
    out: list[Sample] = []
    for index in range(len(classes)):
        members = by_class.get(index, [])
        if not members:
            continue
        rng = np.random.default_rng([seed, index])
        if index in listed:
            picks = rng.choice(len(members), per_class, replace=True)
        else:
            picks = rng.choice(
                len(members), other_per_class, replace=other_per_class > len(members)
            )
        label = int(mapping[index])
        out += [dataclasses.replace(members[i], label=label) for i in picks]
    return out


def subset_facts(subset: Sequence[str], per_class: int, other_per_class: int) -> dict:
    """The ``subset`` metadata of a specialist's predictions."""
    return {
        "classes": list(subset),
        "other": OTHER,
        "per_class": per_class,
        "other_per_class": other_per_class,
    }
