"""Coverage's arithmetic on plain arrays: specialists grouped by model, covered labels, the vote.

A specialist is one trained model. ``ee produce --subset`` writes one prediction per test size
(its views already merged), each carrying the run's id in its ``run`` fact; coverage groups its
specialist inputs by that fact and averages a group's probabilities, so a model predicted at
three sizes is one covered result, not three. An input without a ``run`` fact (an import) is a
model of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ensemble_engine import OTHER, GraphError, InputChunk


def specialist_index(
    spec_classes: Sequence[str], store_classes: Sequence[str], spec_id: str
) -> np.ndarray:
    """Store index of each specialist class, -1 for ``__other__``.

    Every other class must be a store class: a specialist over unknown classes was trained
    against a different label set and cannot be mapped.
    """
    where = {c: i for i, c in enumerate(store_classes)}
    unknown = [c for c in spec_classes if c != OTHER and c not in where]
    if unknown:
        raise GraphError(
            f"coverage: specialist {spec_id!r} names classes {unknown[:5]} that the store lacks; "
            "train specialists on subsets of the store's classes"
        )
    index = np.array([-1 if c == OTHER else where[c] for c in spec_classes], dtype=np.int64)
    if not (index >= 0).any():
        raise GraphError(f"coverage: specialist {spec_id!r} covers no store class, only {OTHER!r}")
    return index


@dataclass(frozen=True)
class Specialist:
    """One specialist model: the input predictions it wrote and the store classes it covers."""

    id: str  # the run id, or the prediction's own id when it records no run
    members: tuple[str, ...]  # input ids (its test sizes)
    index: np.ndarray  # specialist class → store index, -1 for __other__
    subset: np.ndarray  # bool [K]: the store classes it covers


def group_specialists(items: Sequence, n_classes: int, store_classes: Sequence[str]) -> list:
    """Specialist inputs (chunks or sources) grouped by their ``run`` fact, in input order."""
    groups: dict[str, list] = {}
    for item in items:
        run = (item.meta or {}).get("run")
        groups.setdefault(str(run) if run else item.id, []).append(item)
    out = []
    for key, members in groups.items():
        if any(list(m.classes) != list(members[0].classes) for m in members):
            raise GraphError(
                f"coverage: the predictions of specialist run {key!r} ("
                f"{', '.join(m.id for m in members)}) have different classes; re-produce them"
            )
        index = specialist_index(members[0].classes, store_classes, members[0].id)
        subset = np.zeros(n_classes, dtype=bool)
        subset[index[index >= 0]] = True
        out.append(Specialist(key, tuple(m.id for m in members), index, subset))
    return out


def specialist_answer(spec: Specialist, chunks: Sequence[InputChunk]) -> tuple:
    """The model's answer on a block: (store class [n], -1 for ``__other__``; its probability [n]).

    Its predictions' probabilities are averaged (labels count as one-hot, probability 1), so
    the sizes of one model make one answer; ties go to the lowest specialist class index.
    """
    by_id = {c.id: c for c in chunks}
    parts = [
        by_id[m].probs() if by_id[m].has_scores else np.eye(len(spec.index))[by_id[m].labels()]
        for m in spec.members
    ]
    mean = np.mean(parts, axis=0, dtype=np.float64) if len(parts) > 1 else parts[0]
    local = np.argmax(mean, axis=1)
    return spec.index[local], np.take_along_axis(mean, local[:, None], axis=1)[:, 0]


def cover(
    base: np.ndarray,
    answer: np.ndarray,
    confidence: np.ndarray,
    spec: Specialist,
    thresholds: np.ndarray,
    gated: bool = True,
) -> np.ndarray:
    """Base labels corrected by one specialist.

    A row takes the specialist's class ``c`` where it names one (not ``__other__``), its
    probability is at least ``thresholds[c]`` (+inf: never), and, when ``gated``, the base's
    label lies in the specialist's subset; elsewhere the base label stays.
    """
    named = answer >= 0
    take = named & (confidence >= thresholds[np.where(named, answer, 0)])
    if gated:
        take &= spec.subset[base]
    return np.where(take, answer, base)


def vote_keep_base(
    covered: np.ndarray, base: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Hard vote of covered results [n, G]; (labels [n], vote counts [n, K]).

    A row's label changes only where one class has more votes than every other; any tie at the
    top keeps the base's label (the seed keeps its fused label unless the specialists outvote it).
    """
    n, g = covered.shape
    votes = np.zeros((n, n_classes), dtype=np.float32)
    for j in range(g):
        np.add.at(votes, (np.arange(n), covered[:, j]), 1.0)
    if g == 0:
        return base.copy(), votes
    count = (covered[:, :, None] == covered[:, None, :]).sum(axis=2)  # votes of each column's label
    top = count == count.max(axis=1, keepdims=True)
    lo = np.where(top, covered, np.iinfo(np.int64).max).min(axis=1)
    hi = np.where(top, covered, -1).max(axis=1)
    return np.where(lo == hi, lo, base), votes
