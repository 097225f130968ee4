"""Coverage: specialists (class-subset models with an ``__other__`` class) correct a base model.

A specialist is trained on a few confusable classes plus ``__other__`` for everything else. It
is trusted only inside its subset; how far it is trusted is the ``policy``. The arithmetic is in
``coverage_rules`` (grouping, covering, the vote) and ``coverage_policy`` (the ``validated`` fit).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ensemble_engine import OTHER, Combiner, GraphError, InputChunk, InputSource, Output, Role

from .common import check_classes, check_labels, role_inputs
from .coverage_policy import Answers, PolicyFit, covered_matrix, evidence, fit_policy
from .coverage_rules import cover, group_specialists, specialist_answer, vote_keep_base

POLICIES = ("base_gated", "specialist_first", "validated")


class Coverage(Combiner):
    """A base prediction corrected by class-subset specialists.

    One covered result per specialist *model*: inputs carrying the same ``run`` fact (what
    ``ee produce --subset`` writes at each test size) are one specialist, their probabilities
    averaged; an input without a ``run`` fact is a specialist of its own. So the vote has as
    many voters as there are specialist models.

    ``policy``: ``base_gated`` (default) lets a specialist relabel only rows the base already
    placed inside its subset, and only when it does not say ``__other__``;
    ``specialist_first`` takes the specialist's label wherever it names a subset class;
    ``validated`` makes ``base_gated``'s corrections but keeps, per specialist and per covered
    class, only those the fit split shows to fix more rows than they break (``min_gain`` net
    rows at least), above a probability threshold fitted with them (``confidence``); see
    ``coverage_policy``. Its fit-split output is out of fold (``folds``, ``seed``, stratified
    as ``stacking``'s); other splits get the decisions fitted on the whole fit split.

    Each specialist covers the base on its own and the covered results are hard-voted; a label
    changes only where one class has more votes than any other, so ties keep the base's label.
    Output: labels with the vote counts. ``state``: the policy, the specialists and their
    inputs, ``covered`` (each specialist's covered result's top-1 on the split written, None
    without labels), and for ``validated`` the decisions with their fit-split evidence.
    """

    roles = (
        Role("base", many=False, doc="the prediction to correct, over the store's classes"),
        Role(
            "specialists",
            many=True,
            subset_ok=True,
            doc=f"predictions over a class subset plus {OTHER!r}, grouped by their run",
        ),
    )
    params_schema = {
        "type": "object",
        "properties": {
            "policy": {"enum": list(POLICIES), "default": "base_gated"},
            "min_gain": {"type": "integer", "minimum": 1, "default": 2},
            "confidence": {"type": "boolean", "default": True},
            "folds": {"type": "integer", "minimum": 2, "default": 5},
            "seed": {"type": "integer", "minimum": 0, "default": 0},
        },
    }
    needs_fit = True  # exact on an instance: only ``validated`` fits
    output_kind = "labels"

    def __init__(self, params: dict[str, Any] | None = None, classes: list[str] | None = None):
        super().__init__(params, classes)
        self.needs_fit = self.params["policy"] == "validated"
        self.fitted: PolicyFit | None = None
        self.spec_ids: list[str] = []
        self.covered: dict[str, dict[str, float | None]] = {}
        self._members: dict[str, tuple[str, ...]] = {}
        self._gated = self.params["policy"] != "specialist_first"

    def _specs(self, items: list) -> list:
        specs = group_specialists(items, len(self.classes), self.classes)
        ids = [s.id for s in specs]
        self._members = {s.id: s.members for s in specs}
        if self.fitted is not None and ids != self.spec_ids:
            raise GraphError(f"coverage: specialists {ids} differ from the fit's; refit")
        return specs

    def _read(self, inputs: dict[str, list[InputSource]]) -> Answers:
        """Every row of one split: the base's labels and each specialist's answer."""
        base = role_inputs(inputs, "base", "coverage")
        check_classes(base, self.classes, "coverage")
        labels = np.concatenate([c.labels() for _, c in base[0].iter_chunks()])
        sources = role_inputs(inputs, "specialists", "coverage")
        specs = self._specs(sources)
        by_id = {s.id: s for s in sources}  # one model's sizes in memory at a time
        pairs = [specialist_answer(s, [by_id[m].read() for m in s.members]) for s in specs]
        answer = np.stack([p[0] for p in pairs], axis=1)
        confidence = np.stack([p[1] for p in pairs], axis=1)
        return Answers(labels, answer, confidence, specs)

    def _thresholds(self, specs: list) -> np.ndarray:
        if self.params["policy"] == "validated":
            if self.fitted is None:
                raise GraphError("coverage: policy validated must be fitted on the fit split")
            return self.fitted.thresholds
        return np.zeros((len(specs), len(self.classes)))

    def fit(self, inputs: dict[str, list[InputSource]], labels: np.ndarray) -> None:
        p, k = self.params, len(self.classes)
        y = check_labels(labels, k, "coverage")
        answers = self._read(inputs)
        fitted = fit_policy(
            answers, y, min_gain=p["min_gain"], confidence=p["confidence"], folds=p["folds"],
            seed=p["seed"], k=k,
        )  # fmt: skip
        in_sample = vote_keep_base(covered_matrix(answers, fitted.thresholds), answers.base, k)[0]
        self.fitted, self.spec_ids = fitted, [s.id for s in answers.specs]
        self.fitted_state = {
            "decisions": evidence(answers, y, fitted, self.classes),
            "fit": {
                "rows": len(y),
                "folds": p["folds"],
                "base_top1": float((answers.base == y).mean()),
                "top1_in_sample": float((in_sample == y).mean()),
                "top1_out_of_fold": float((fitted.oof_labels == y).mean()),
            },
        }

    def observe(
        self,
        split: str,
        inputs: dict[str, list[InputSource]],
        labels: np.ndarray,
        on_fit_split: bool,
    ) -> None:
        """Each specialist's covered result's top-1 on ``split`` (out of fold on the fit split)."""
        a = self._read(inputs)
        if on_fit_split and self.fitted is not None:
            covered = self.fitted.oof_covered
        else:
            covered = covered_matrix(a, self._thresholds(a.specs), self._gated)
        known = labels >= 0
        hits = (covered[known] == labels[known, None]).mean(axis=0) if known.any() else None
        self.covered = {
            s.id: {"top1": None if hits is None else float(hits[g])} for g, s in enumerate(a.specs)
        }

    def apply(self, inputs: dict[str, list[InputChunk]], rows: slice, on_fit_split: bool) -> Output:
        base = role_inputs(inputs, "base", "coverage")
        if len(base) != 1:
            raise GraphError(f"coverage: role 'base' takes one input, got {len(base)}")
        check_classes(base, self.classes, "coverage")
        chunks = role_inputs(inputs, "specialists", "coverage")
        specs = self._specs(chunks)
        base_labels, k = base[0].labels(), len(self.classes)
        if on_fit_split and self.fitted is not None:
            if rows.stop > len(self.fitted.oof_labels):
                raise GraphError(
                    f"coverage: rows {rows.start}:{rows.stop} lie beyond the "
                    f"{len(self.fitted.oof_labels)} rows of the fit split"
                )
            return Output(
                "labels",
                labels=self.fitted.oof_labels[rows].copy(),
                votes=vote_keep_base(self.fitted.oof_covered[rows], base_labels, k)[1],
            )
        thresholds = self._thresholds(specs)
        columns = []
        for g, spec in enumerate(specs):
            answer, confidence = specialist_answer(spec, chunks)
            columns.append(cover(base_labels, answer, confidence, spec, thresholds[g], self._gated))
        labels, votes = vote_keep_base(np.stack(columns, axis=1), base_labels, k)
        return Output("labels", labels=labels, votes=votes)

    def state(self) -> dict[str, Any]:
        return {
            "policy": self.params["policy"],
            "specialists": {s: list(m) for s, m in self._members.items()},
            "covered": dict(self.covered),
            **self.fitted_state,
        }
