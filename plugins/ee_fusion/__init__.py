"""Built-in fusion combiners: voting, stacking, ensemble selection, coverage, calibration.

Each combiner is a ``Combiner`` subclass wrapping pure functions of its module (numpy; torch
kernels for the weighted mean of probabilities, ``mean_probs``), so the maths is testable on
plain arrays; the engine streams row chunks through ``apply``.
"""

from __future__ import annotations

from ensemble_engine import Register, hookimpl, lazy_exports

# Combiner classes are imported on first use (scipy and scikit-learn take a second to load).
_EXPORTS = {
    "Calibrate": "calibration",
    "Coverage": "coverage",
    "HardVote": "voting",
    "Select": "selection",
    "SoftVote": "voting",
    "Stacking": "stacking",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)


def _target(cls: str) -> str:
    return f"{__name__}.{_EXPORTS[cls]}:{cls}"


@hookimpl
def register_combiners(register: Register) -> None:
    register(
        "soft_vote",
        _target("SoftVote"),
        description="weighted mean of probabilities (uniform, explicit or softmax of top-1)",
    )
    register(
        "hard_vote",
        _target("HardVote"),
        description="weighted majority of top-1 labels; ties by summed probability",
    )
    register(
        "stacking",
        _target("Stacking"),
        description="meta-learner (log-linear weights or logistic regression), out-of-fold",
    )
    register(
        "select",
        _target("Select"),
        description="greedy ensemble selection with replacement (Caruana 2004), cost budget",
    )
    register(
        "coverage",
        _target("Coverage"),
        description="class-subset specialists correct a base prediction",
    )
    register(
        "calibrate",
        _target("Calibrate"),
        description="temperature scaling of one input, fitted on the fit split",
    )
