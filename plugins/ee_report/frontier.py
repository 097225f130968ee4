"""The accuracy–cost Pareto frontier: which predictions no other one beats at no more cost.

A point is a complete prediction over the store's classes with a top-1 on the split and a known
cost (``gflops`` per image). Point ``a`` dominates ``b`` when ``a`` is at least as accurate at
no more cost and strictly better in one of the two; the frontier is every point nothing
dominates (two identical points are both on it). Predictions without a known cost are listed
apart, never placed at zero cost.

A combiner that uses only some of its inputs (``select``) records the cost of those in its
``state``; that cost is the prediction's, before the ``cost`` attr summed over every input.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ensemble_engine import Prediction, PredictionStore

from .data import is_subset


@dataclass(frozen=True)
class Point:
    name: str
    top1: float
    gflops: float


@dataclass
class Frontier:
    split: str
    points: list[Point]  # every point with a known cost, by cost then top-1 (best first)
    frontier: list[Point]  # the undominated ones, in the same order
    unknown: list[str] = field(default_factory=list)  # scored, but of unknown cost
    unscored: list[str] = field(default_factory=list)  # no top-1 on the split

    def on_frontier(self, point: Point) -> bool:
        return point in self.frontier

    def as_json(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "points": [
                {"name": p.name, "top1": p.top1, "gflops": p.gflops, "frontier": p in self.frontier}
                for p in self.points
            ],
            "frontier": [p.name for p in self.frontier],
            "cost_unknown": self.unknown,
            "no_top1": self.unscored,
        }


def dominates(a: Point, b: Point) -> bool:
    """``a`` is at least as accurate at no more cost, and strictly better in one of the two."""
    no_worse = a.top1 >= b.top1 and a.gflops <= b.gflops
    return no_worse and (a.top1 > b.top1 or a.gflops < b.gflops)


def pareto_frontier(points: Iterable[Point]) -> list[Point]:
    """The points nothing dominates, by cost (then top-1, best first, then name)."""
    points = sort_points(points)
    return [p for p in points if not any(dominates(q, p) for q in points)]


def sort_points(points: Iterable[Point]) -> list[Point]:
    return sorted(points, key=lambda p: (p.gflops, -p.top1, p.name))


def _number(value: object) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) and value >= 0 else None


def gflops_of(attrs: Mapping[str, Any]) -> float | None:
    """GFLOPs per image of a prediction from its attrs; None where unknown."""
    state = attrs.get("state")
    cost = state.get("cost") if isinstance(state, Mapping) else None
    if not isinstance(cost, Mapping):
        cost = attrs.get("cost")
    if not isinstance(cost, Mapping) or cost.get("unknown"):
        return None
    return _number(cost.get("gflops"))


def frontier_of(
    items: Iterable[tuple[str, float | None, Mapping[str, Any]]], split: str
) -> Frontier:
    """The frontier of ``(name, top1 or None, attrs)`` items on ``split``."""
    points, unknown, unscored = [], [], []
    for name, top1, attrs in items:
        if top1 is None:
            unscored.append(name)
            continue
        gflops = gflops_of(attrs)
        if gflops is None:
            unknown.append(name)
        else:
            points.append(Point(name, float(top1), gflops))
    return Frontier(
        split, sort_points(points), pareto_frontier(points), sorted(unknown), sorted(unscored)
    )


def store_frontier(
    store: PredictionStore, split: str, preds: list[Prediction] | None = None
) -> Frontier:
    """The frontier of every complete full-class prediction on ``split`` (of ``preds`` if given)."""
    preds = store.list(split=split) if preds is None else [p for p in preds if p.split == split]
    full = [p for p in preds if not is_subset(store, p)]
    return frontier_of(((p.name, p.metrics.get("top1"), p.attrs) for p in full), split)
