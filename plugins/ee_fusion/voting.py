"""Soft and hard voting: weighted mean of probabilities, weighted majority of labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ensemble_engine import Combiner, GraphError, InputChunk, InputSource, Output, Role

from .budget import BUDGET_SCHEMA, check_budget
from .common import (
    WEIGHTS_SCHEMA,
    check_classes,
    check_labels,
    resolve_weights,
    role_inputs,
    top1_accuracy,
)
from .mean_probs import weighted_mean_probs

#: Vote totals closer than this (relative to the total weight) count as a tie; weights are
#: floats, so 0.1 + 0.2 must tie with 0.3. Relative only: weights of 1e-7 still decide.
TIE_TOLERANCE = 1e-6


def softmax_score_weights(scores: Sequence[float], temperature: float) -> np.ndarray:
    """``softmax(scores / temperature)``: the weights of the ``softmax_score`` rule."""
    x = np.asarray(scores, dtype=np.float64) / temperature
    x = np.exp(x - x.max())
    return x / x.sum()


def hard_vote(
    labels: Sequence[np.ndarray],
    weights: Sequence[float],
    n_classes: int,
    tie_scores: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted majority vote. Returns (winning class [n], vote totals [n, K]).

    Classes whose totals tie with the maximum are separated by ``tie_scores`` [n, K] (the
    highest wins); where there are none, or they tie as well, the lowest class index wins.
    """
    n = len(labels[0])
    votes = np.zeros((n, n_classes), dtype=np.float32)
    rows = np.arange(n)
    for lab, w in zip(labels, weights, strict=True):
        votes[rows, lab] += np.float32(w)  # one label per row: no repeated (row, class) pair
    tol = TIE_TOLERANCE * float(np.sum(weights))
    tied = votes >= votes.max(axis=1, keepdims=True) - tol
    if tie_scores is None:
        return tied.argmax(axis=1), votes  # first True = lowest tied index
    keyed = np.where(tied, np.asarray(tie_scores, dtype=np.float32), -np.inf)
    return keyed.argmax(axis=1), votes


def _ids(items: Sequence[InputChunk | InputSource]) -> list[str]:
    return [item.id for item in items]


class SoftVote(Combiner):
    """Weighted mean of the inputs' probabilities (logits go through softmax first).

    ``weights``: "uniform"; a list, one weight per input in input order; a mapping
    {input id or fnmatch pattern: weight}; or "softmax_score": ``softmax(top1 / temperature)``
    where top1 is each input's top-1 accuracy on the fit split. Accuracies of good models sit
    close together, so the temperature matters: with scores 0.6 and 0.7 and temperature 1 the
    weights are 0.475 and 0.525, nearly uniform; a temperature of 0.01 makes them 4.5e-5 and
    ~1.0, close to picking the best input. Only "softmax_score" and a budget need a fit:
    ``needs_fit`` is True on the class (it may need one) and exact on an instance.

    ``budget`` (``{gflops: X}`` or ``{images_per_s: Y}``, with ``strategy`` as in ``select``)
    first chooses the pool's members within it by greedy selection on the fit split (in
    sample), then weighs the chosen ones by ``weights``; the others get weight 0.
    """

    roles = (Role("inputs", kinds=("logits", "probs"), doc="predictions over the store's classes"),)
    params_schema = {
        "type": "object",
        "properties": {
            "weights": {
                "oneOf": [*WEIGHTS_SCHEMA["oneOf"], {"enum": ["softmax_score"]}],
                "default": "uniform",
            },
            "temperature": {"type": "number", "exclusiveMinimum": 0, "default": 1.0},
            "budget": {**BUDGET_SCHEMA, "default": None, "type": ["object", "null"]},
            "strategy": {"enum": ["greedy", "gain_per_cost"], "default": "greedy"},
        },
    }
    needs_fit = True
    output_kind = "probs"
    scores_as_stored = True  # weighted_mean_probs reads float16 as it is (see graph.runner)

    def __init__(self, params: dict[str, Any] | None = None, classes: list[str] | None = None):
        super().__init__(params, classes)
        budgeted = self.params["budget"] is not None
        self.needs_fit = self.params["weights"] == "softmax_score" or budgeted  # type: ignore[misc]
        self.members: set[str] | None = None  # the inputs chosen within the budget

    @classmethod
    def validate_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        check_budget(params.get("budget"))
        return super().validate_params(params)

    def fit(self, inputs: dict[str, list[InputSource]], labels: np.ndarray) -> None:
        sources = role_inputs(inputs, "inputs", "soft_vote")
        check_classes(sources, self.classes, "soft_vote")
        chosen: dict[str, Any] = {}
        if self.params["budget"] is not None:
            chosen = self._choose(inputs, labels)
            sources = [s for s in sources if s.id in chosen["chosen"]]
        if self.params["weights"] != "softmax_score":
            self.fitted_state = dict(chosen)
            self._weights(_ids(role_inputs(inputs, "inputs", "soft_vote")))
            return
        labels = check_labels(labels, len(self.classes), "soft_vote")
        scores = [top1_accuracy(src, labels) for src in sources]
        weights = softmax_score_weights(scores, self.params["temperature"])
        ids = _ids(sources)
        self.fitted_state = {
            "weights": dict(zip(ids, map(float, weights), strict=True)),
            "scores": dict(zip(ids, scores, strict=True)),
            **chosen,
        }

    def _choose(self, inputs: dict[str, list[InputSource]], labels: np.ndarray) -> dict[str, Any]:
        """The pool members within the budget, chosen by ``select`` in sample, and their cost."""
        from .selection import Select

        p = {"budget": self.params["budget"], "strategy": self.params["strategy"], "folds": 0}
        selection = Select(p, classes=self.classes)
        selection.fit(inputs, labels)
        state = selection.state()
        self.members = set(state["chosen"])
        keep = ("chosen", "cost", "budget", "strategy", "refused")
        return {**{k: state[k] for k in keep}, "chosen": sorted(state["chosen"])}

    def _weights(self, ids: list[str]) -> list[float]:
        if self.params["weights"] == "softmax_score":
            fitted = self.fitted_state.get("weights")
            if fitted is None:
                raise GraphError("soft_vote with weights softmax_score must be fitted first")
            missing = [i for i in ids if i not in fitted and self._member(i)]
            if missing:
                raise GraphError(f"soft_vote: inputs {missing} were not part of the fit; refit")
            return [fitted[i] if self._member(i) else 0.0 for i in ids]
        weights = resolve_weights(self.params["weights"], ids)
        weights = np.where([self._member(i) for i in ids], weights, 0.0)
        if weights.max() <= 0:
            raise GraphError(
                "soft_vote: weights give every input chosen within the budget weight 0; "
                "weigh the chosen ones or raise the budget"
            )
        self.fitted_state.setdefault("weights", dict(zip(ids, map(float, weights), strict=True)))
        return list(weights)

    def _member(self, input_id: str) -> bool:
        return self.members is None or input_id in self.members

    def apply(self, inputs: dict[str, list[InputChunk]], rows: slice, on_fit_split: bool) -> Output:
        chunks = role_inputs(inputs, "inputs", "soft_vote")
        check_classes(chunks, self.classes, "soft_vote")
        weights = self._weights(_ids(chunks))
        return Output("probs", scores=weighted_mean_probs(chunks, weights))


class HardVote(Combiner):
    """Weighted majority of the inputs' top-1 classes (a labels input votes its label).

    ``weights`` as in soft_vote but without "softmax_score". Ties are broken by the highest
    weighted sum of probabilities among the tied classes, summed over the inputs that carry
    scores (with the same weights as the votes, so a zero-weight input has no say); where no
    input carries scores, or those sums tie too, the lowest class index wins. The output keeps
    the weighted vote totals as ``votes``.
    """

    roles = (Role("inputs", doc="predictions over the store's classes, any kind"),)
    params_schema = {"type": "object", "properties": {"weights": WEIGHTS_SCHEMA}}
    output_kind = "labels"

    def apply(self, inputs: dict[str, list[InputChunk]], rows: slice, on_fit_split: bool) -> Output:
        chunks = role_inputs(inputs, "inputs", "hard_vote")
        check_classes(chunks, self.classes, "hard_vote")
        ids = _ids(chunks)
        weights = resolve_weights(self.params["weights"], ids)
        self.fitted_state.setdefault("weights", dict(zip(ids, map(float, weights), strict=True)))
        scored = [(c, w) for c, w in zip(chunks, weights, strict=True) if c.has_scores and w > 0]
        tie_scores = None
        if scored:
            tie_scores = weighted_mean_probs([c for c, _ in scored], [w for _, w in scored])
        labels, votes = hard_vote(
            [c.labels() for c in chunks], weights, len(self.classes), tie_scores
        )
        return Output("labels", labels=labels, votes=votes)
