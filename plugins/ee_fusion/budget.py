"""Cost budgets of an ensemble selection: what each input costs, what a chosen set of them costs.

An input's cost is its ``cost`` attr: ``gflops`` per image, ``images_per_s`` measured where it
ran, and the producer ``members`` it is made of (a fused input lists several). A set of inputs
costs the sum over its *distinct* members, so an input picked twice, or two inputs sharing a
producer, pay for it once. An input without a ``cost`` attr, or whose value is null, has unknown
cost: under a budget it is refused, never counted as free.

Two measures: ``gflops`` (a budget of at most X GFLOPs per image) and seconds per image, the
inverse throughput (a budget ``images_per_s: Y`` keeps the summed seconds per image of the
members within 1/Y: running them one after another on the devices they were measured on).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ensemble_engine import GraphError, InputSource

from .folds import folds_for_small_classes, stratified_folds

BUDGET_KEYS = ("gflops", "images_per_s")

#: A pick that adds no cost (already chosen) counts as adding this many units in gain per cost.
EPSILON_COST = 1e-9

BUDGET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {key: {"type": "number", "exclusiveMinimum": 0} for key in BUDGET_KEYS},
    "additionalProperties": False,
    "minProperties": 1,
    "maxProperties": 1,
}


def check_budget(budget: object) -> None:
    """One-line errors for the budget mistakes a JSON Schema words poorly."""
    if not isinstance(budget, Mapping):
        return  # the schema says what it should be
    unknown = sorted(set(budget) - set(BUDGET_KEYS))
    if unknown:
        raise GraphError(
            f"budget: unknown key {unknown[0]!r}; give gflops (GFLOPs per image, at most) or "
            "images_per_s (throughput, at least)"
        )
    if len(budget) != 1:
        raise GraphError(
            "budget: give one of gflops or images_per_s"
            + (", not both" if len(budget) == 2 else "")
        )
    ((key, value),) = budget.items()
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and not (math.isfinite(value) and value > 0):
        raise GraphError(f"budget: {key} {value!r} must be a positive number")


@dataclass(frozen=True)
class InputCost:
    """One input's cost facts; None where unknown."""

    id: str
    gflops: float | None
    seconds: float | None  # per image: 1 / images_per_s
    members: tuple[str, ...]


def _number(value: object) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) and value >= 0 else None


def input_cost(source: InputSource) -> InputCost:
    """The cost facts of an input, read from its attrs (``meta``)."""
    cost = source.meta.get("cost") if isinstance(source.meta, Mapping) else None
    if not isinstance(cost, Mapping):
        return InputCost(source.id, None, None, (source.id,))
    members = tuple(sorted({str(m) for m in cost.get("members") or [source.id]}))
    if cost.get("unknown"):
        return InputCost(source.id, None, None, members)
    ips = _number(cost.get("images_per_s"))
    seconds = 1.0 / ips if ips else None
    return InputCost(source.id, _number(cost.get("gflops")), seconds, members)


class CostModel:
    """The cost of sets of inputs in one measure ("gflops" or "seconds" per image)."""

    def __init__(self, costs: Sequence[InputCost], measure: str) -> None:
        self.measure = measure
        self.values = [getattr(c, measure) for c in costs]
        self.members = [c.members for c in costs]
        # a member's own cost, from an input made of that member alone
        self.single = {
            c.members[0]: v for c, v in zip(costs, self.values, strict=True) if len(c.members) == 1
        }

    def known(self, i: int) -> bool:
        return self.values[i] is not None

    def total(self, chosen: Iterable[int]) -> float | None:
        """The summed cost of the distinct members of ``chosen``; None if one is unknown.

        Where every member's own cost is known, each counts once; otherwise the inputs' costs
        are summed, which can only count a shared member more than once (an upper bound).
        """
        chosen = sorted(set(chosen))
        values = [self.values[i] for i in chosen]
        if any(v is None for v in values):
            return None
        union = sorted({m for i in chosen for m in self.members[i]})
        parts = [self.single.get(m) for m in union]
        if all(p is not None for p in parts):
            return math.fsum(parts)  # type: ignore[arg-type]
        return math.fsum(values)  # type: ignore[arg-type]


@dataclass
class Budget:
    """A cost model and its limit (``inf`` for a cost-aware pick without a budget)."""

    model: CostModel
    limit: float

    def fits(self, chosen: Iterable[int]) -> bool:
        total = self.model.total(chosen)
        return total is not None and total <= self.limit

    def added(self, chosen: set[int], i: int) -> float:
        before = self.model.total(chosen) if chosen else 0.0
        return max(0.0, (self.model.total(chosen | {i}) or 0.0) - (before or 0.0))


def make_budget(
    sources: Sequence[InputSource], budget: Mapping[str, float] | None, strategy: str
) -> tuple[Budget | None, list[str]]:
    """The budget of a fit and the ids refused for unknown cost (in input order).

    No budget and the plain greedy strategy need no costs: (None, []).
    """
    if not budget and strategy == "greedy":
        return None, []
    key = next(iter(budget)) if budget else "gflops"
    measure = "gflops" if key == "gflops" else "seconds"
    limit = math.inf if not budget else budget[key] if key == "gflops" else 1.0 / budget[key]
    model = CostModel([input_cost(s) for s in sources], measure)
    refused = [s.id for i, s in enumerate(sources) if not model.known(i)]
    if len(refused) == len(sources):
        shown = ", ".join(refused[:3]) + (", …" if len(refused) > 3 else "")
        raise GraphError(
            f"select: no input has a known cost ({key}), so none can be chosen "
            f"{'under a budget' if budget else 'by gain per cost'} (cost unknown: {shown}); "
            "record the inputs' cost facts or drop the budget"
        )
    return Budget(model, limit), refused


def cost_facts(sources: Sequence[InputSource], chosen: Iterable[int]) -> dict[str, Any]:
    """The cost of the chosen inputs as a ``cost`` attr: gflops, images_per_s, members."""
    chosen = sorted(set(chosen))
    costs = [input_cost(s) for s in sources]
    gflops = CostModel(costs, "gflops").total(chosen)
    seconds = CostModel(costs, "seconds").total(chosen)
    members = sorted({m for i in chosen for m in costs[i].members})
    facts: dict[str, Any] = {
        "gflops": gflops,
        "images_per_s": 1.0 / seconds if seconds else None,
        "members": members,
    }
    unknown = sorted({m for i in chosen if costs[i].gflops is None for m in costs[i].members})
    if unknown:
        facts["unknown"] = unknown
    return facts


def fold_ids(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold [n] of each fit row: stratified by label, shuffled with ``seed`` (as ``stacking``).

    A fit split whose commonest class has fewer rows than ``folds`` gets that many folds.
    """
    folds = folds_for_small_classes(labels, folds)
    if folds < 2:
        raise GraphError(
            f"select: {len(labels)} fit rows cannot make 2 folds; fit on a larger labelled split "
            "or set folds: 0 (in sample)"
        )
    return stratified_folds(labels, folds, seed, "select")


class RowView:
    """Rows ``rows`` of every input of a [inputs, rows, classes] array or cache."""

    def __init__(self, probs: Any, rows: np.ndarray) -> None:
        self.probs, self.rows = probs, rows
        self.shape = (len(probs), len(rows), probs.shape[2])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.probs[i])[self.rows]
