"""Input handling shared by the fusion combiners: class-space checks, weights, streamed reads.

Combiners see predictions either as ``InputChunk`` blocks (``apply``) or as ``InputSource``
streams (``fit``). These helpers keep the checks and conversions in one place so that every
combiner refuses the same mistakes with the same messages.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ensemble_engine import GraphError, InputChunk, InputSource

#: Log-probabilities are floored here: below e^-30 a probability carries nothing a vote can use,
#: and the floor keeps ``log(0)`` of a stored float16 probability finite.
LOG_FLOOR = -30.0

#: The largest weight must lie in this range: only the weights' ratios matter, and inside it
#: their sums and float32 vote totals neither overflow nor underflow.
WEIGHT_RANGE = (1e-30, 1e30)

_WEIGHT = {"type": "number", "minimum": 0, "maximum": WEIGHT_RANGE[1]}

#: JSON Schema of a ``weights`` parameter: "uniform", one number per input, or {id|pattern: w}.
WEIGHTS_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {"enum": ["uniform"]},
        {"type": "array", "items": _WEIGHT, "minItems": 1},
        {
            "type": "object",
            "additionalProperties": _WEIGHT,
            "minProperties": 1,
        },
    ],
    "default": "uniform",
}


def check_classes(
    items: Iterable[InputChunk | InputSource], classes: Sequence[str], combiner: str
) -> None:
    """Refuse inputs whose class space is not exactly the store's (same ids, same order)."""
    if not classes:
        raise GraphError(f"{combiner}: no store classes were given; build it with classes=[...]")
    for item in items:
        if item.classes is not classes and list(item.classes) != list(classes):
            raise GraphError(
                f"{combiner}: input {item.id!r} has {len(item.classes)} classes that differ from "
                f"the store's {len(classes)}; fuse only predictions over the store's classes "
                "(class-subset specialists belong in a coverage node)"
            )


def check_labels(labels: np.ndarray, n_classes: int, combiner: str) -> np.ndarray:
    """Fit-split labels as int64 store indices; every row must carry a known label."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise GraphError(f"{combiner}: the fit split has no labels; choose a labelled fit split")
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= n_classes:
        raise GraphError(
            f"{combiner}: the fit split needs a known label (0..{n_classes - 1}) on every row; "
            "choose a labelled split as the graph's fit split"
        )
    return labels


def resolve_weights(
    spec: str | list[float] | Mapping[str, float], ids: Sequence[str]
) -> np.ndarray:
    """One non-negative weight per input id, from "uniform", a list or an {id|pattern: w} map.

    A mapping matches an input by its exact id first, then by the first fnmatch pattern in the
    mapping's order; add a ``"*"`` entry as the default. An input matched by nothing is an error,
    so a typo in an id cannot silently drop an input. The largest weight must lie in
    ``WEIGHT_RANGE`` (1e308 + 1e308 overflows to inf, and the vote would be all zeros).
    """
    if spec == "uniform":
        weights = np.ones(len(ids))
    elif isinstance(spec, Mapping):
        weights = np.array([_match_weight(spec, i) for i in ids], dtype=np.float64)
    elif isinstance(spec, Sequence) and not isinstance(spec, str):
        if len(spec) != len(ids):
            raise GraphError(
                f"weights lists {len(spec)} numbers for {len(ids)} inputs; give one per input "
                "in input order, or a mapping {id or pattern: weight}"
            )
        weights = np.asarray(spec, dtype=np.float64)
    else:
        raise GraphError(f"weights {spec!r} is not understood here; use 'uniform', a list or a map")
    if not np.all(np.isfinite(weights)) or weights.min(initial=0.0) < 0 or weights.max() <= 0:
        raise GraphError("weights must be finite, non-negative and not all zero")
    lo, hi = WEIGHT_RANGE
    if not lo <= weights.max() <= hi:
        raise GraphError(
            f"weights: the largest is {weights.max():g}, outside {lo:g}..{hi:g}; only their "
            "ratios matter, so scale them (e.g. divide all by the largest)"
        )
    return weights


def _match_weight(spec: Mapping[str, float], input_id: str) -> float:
    if input_id in spec:
        return float(spec[input_id])
    for pattern, weight in spec.items():
        if fnmatch.fnmatchcase(input_id, pattern):
            return float(weight)
    raise GraphError(
        f"input {input_id!r} matches no key of weights {sorted(spec)}; add its id or a '*' entry"
    )


def log_probs(chunk: InputChunk) -> np.ndarray:
    """Log-probabilities [n, k] float32 of a logits or probs chunk, floored at ``LOG_FLOOR``."""
    if chunk.kind == "logits":
        z = np.asarray(chunk.scores, dtype=np.float32)
        z = z - z.max(axis=1, keepdims=True)
        out = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    else:
        p = chunk.probs()
        out = np.log(np.maximum(p, np.float32(np.exp(LOG_FLOOR))))
    return np.maximum(out, np.float32(LOG_FLOOR))


def as_logits(chunk: InputChunk) -> np.ndarray:
    """Logits [n, k] float32: stored logits as they are, log of stored probabilities (floored)."""
    if chunk.kind == "logits":
        return np.asarray(chunk.scores, dtype=np.float32)
    return log_probs(chunk)


def top1_accuracy(source: InputSource, labels: np.ndarray) -> float:
    """Fraction of rows whose top-1 class is the label, streamed chunk by chunk.

    The top-1 class is the one ``ee export`` would write (``InputChunk.labels``: ties go to the
    lowest class index), so a constant prediction scores the share of class 0, not 1.0.
    """
    hits, seen = 0, 0
    for rows, chunk in source.iter_chunks():
        if rows.stop > len(labels):
            break
        hits += int((chunk.labels() == labels[rows]).sum())  # export's tie rule
        seen += rows.stop - rows.start
    if seen != len(labels):
        raise GraphError(
            f"input {source.id!r} does not have one row per fit-split label ({len(labels)}); "
            "its predictions do not match the split"
        )
    return hits / len(labels)


def role_inputs(inputs: Mapping[str, Sequence[Any]], role: str, combiner: str) -> list[Any]:
    """The list of inputs given for ``role``; an empty or missing role is an error."""
    items = list(inputs.get(role) or [])
    if not items:
        raise GraphError(f"{combiner}: role {role!r} has no inputs; list at least one in the graph")
    return items
