"""Built-in fusion combiners: voting, stacking, ensemble selection, coverage, calibration.

Each combiner is a ``Combiner`` subclass wrapping pure numpy functions of its module, so the
maths is testable on plain arrays; the engine streams row chunks through ``apply``.
"""

from __future__ import annotations

from ensemble_engine.hookspecs import Register, hookimpl

from .calibration import Calibrate
from .coverage import Coverage
from .selection import Select
from .stacking import Stacking
from .voting import HardVote, SoftVote

__all__ = ["Calibrate", "Coverage", "HardVote", "Select", "SoftVote", "Stacking"]


@hookimpl
def register_combiners(register: Register) -> None:
    register(
        "soft_vote",
        SoftVote,
        description="weighted mean of probabilities (uniform, explicit or softmax of top-1)",
    )
    register(
        "hard_vote",
        HardVote,
        description="weighted majority of top-1 labels; ties by summed probability",
    )
    register(
        "stacking",
        Stacking,
        description="meta-learner (log-linear weights or logistic regression), out-of-fold",
    )
    register(
        "select",
        Select,
        description="greedy ensemble selection with replacement (Caruana 2004)",
    )
    register(
        "coverage",
        Coverage,
        description="class-subset specialists correct a base prediction",
    )
    register(
        "calibrate",
        Calibrate,
        description="temperature scaling of one input, fitted on the fit split",
    )
