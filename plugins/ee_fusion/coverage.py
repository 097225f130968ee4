"""Coverage: specialists (class-subset models with an ``__other__`` class) correct a base model.

A specialist is trained on a few confusable classes plus ``__other__`` for everything else. It
is trusted only inside its subset; how far it is trusted is the ``policy``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ensemble_engine.combiner import OTHER, Combiner, InputChunk, Output, Role
from ensemble_engine.errors import GraphError

from .common import check_classes, role_inputs
from .voting import hard_vote

POLICIES = ("base_gated", "specialist_first")


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


def cover(
    base_labels: np.ndarray, spec_labels: np.ndarray, subset: np.ndarray, policy: str
) -> np.ndarray:
    """Base labels corrected by one specialist.

    ``spec_labels``: the specialist's answer as a store index, -1 for ``__other__``;
    ``subset``: bool [K], the store classes the specialist covers.
    ``base_gated``: where the base label lies in the subset, take the specialist's label unless
    it says ``__other__``; elsewhere keep the base. ``specialist_first``: wherever the
    specialist names a subset class, take it, whatever the base said.
    """
    if policy == "base_gated":
        take = subset[base_labels] & (spec_labels >= 0)
    elif policy == "specialist_first":
        take = spec_labels >= 0
    else:
        raise GraphError(f"coverage: unknown policy {policy!r}; use one of {', '.join(POLICIES)}")
    return np.where(take, spec_labels, base_labels)


class Coverage(Combiner):
    """A base prediction corrected by class-subset specialists.

    ``policy``: ``base_gated`` (default) lets a specialist relabel only rows the base already
    placed inside its subset, and only when it does not say ``__other__``;
    ``specialist_first`` takes the specialist's label wherever it names a subset class.
    With several specialists each corrects the base on its own, and the corrected labels are
    hard-voted; a tie goes to the class the base gives the highest probability where the base
    carries scores, else to the lowest class index. Output: labels with the vote counts.
    """

    roles = (
        Role("base", many=False, doc="the prediction to correct, over the store's classes"),
        Role(
            "specialists",
            many=True,
            subset_ok=True,
            doc=f"predictions over a class subset plus {OTHER!r}",
        ),
    )
    params_schema = {
        "type": "object",
        "properties": {"policy": {"enum": list(POLICIES), "default": "base_gated"}},
    }
    output_kind = "labels"

    def apply(self, inputs: dict[str, list[InputChunk]], rows: slice, on_fit_split: bool) -> Output:
        base = role_inputs(inputs, "base", "coverage")
        if len(base) != 1:
            raise GraphError(f"coverage: role 'base' takes one input, got {len(base)}")
        check_classes(base, self.classes, "coverage")
        specialists = role_inputs(inputs, "specialists", "coverage")
        base_labels = base[0].labels()
        n_classes = len(self.classes)
        covered = []
        for spec in specialists:
            index = specialist_index(spec.classes, self.classes, spec.id)
            subset = np.zeros(n_classes, dtype=bool)
            subset[index[index >= 0]] = True
            covered.append(cover(base_labels, index[spec.labels()], subset, self.params["policy"]))
        tie_scores = base[0].probs() if base[0].has_scores else None
        labels, votes = hard_vote(covered, [1.0] * len(covered), n_classes, tie_scores)
        return Output("labels", labels=labels, votes=votes)

    def state(self) -> dict[str, object]:
        return {"policy": self.params["policy"]}
