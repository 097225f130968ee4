"""Temperature scaling (Guo et al. 2017): one scalar T per input, fitted on the fit split.

Dividing logits by T changes no ranking, so accuracy is untouched; only the confidence moves.
A calibrated input gives soft votes and stacking probabilities that mean what they say.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from ensemble_engine import Combiner, GraphError, InputChunk, InputSource, Output, Role

from .common import as_logits, check_classes, check_labels, role_inputs

#: Search range of T; models are rarely off by more than a factor of 100 either way.
T_BOUNDS = (1e-2, 1e2)


def temperature_nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of ``softmax(logits / T)`` at the labels (float64)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in ``T_BOUNDS`` that minimises ``temperature_nll``, searched on log T.

    The NLL is smooth and unimodal in log T, so a bounded Brent search is enough and needs no
    gradient.
    """
    lo, hi = np.log(T_BOUNDS)
    result = minimize_scalar(
        lambda log_t: temperature_nll(logits, labels, float(np.exp(log_t))),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(result.x))


class Calibrate(Combiner):
    """Temperature-scales one input: its output is ``logits / T``, kind logits.

    T minimises the NLL on the fit split. A probs input is first turned into logits by ``log``
    (floored at e^-30). The output stays logits rather than offering probs as well: the output
    kind is declared by the class, and every consumer of probabilities applies the softmax
    itself. The fit reads the input whole: one input of [rows, classes] float32.
    """

    roles = (Role("inputs", many=False, kinds=("logits", "probs"), doc="the input to calibrate"),)
    params_schema = {"type": "object", "properties": {}}
    needs_fit = True
    output_kind = "logits"

    def fit(self, inputs: dict[str, list[InputSource]], labels: np.ndarray) -> None:
        sources = role_inputs(inputs, "inputs", "calibrate")
        check_classes(sources, self.classes, "calibrate")
        labels = check_labels(labels, len(self.classes), "calibrate")
        logits = as_logits(sources[0].read())
        if len(logits) != len(labels):
            raise GraphError(
                f"calibrate: input {sources[0].id!r} has {len(logits)} rows but the fit split "
                f"has {len(labels)} labels; its predictions do not cover the split"
            )
        temperature = fit_temperature(logits, labels)
        self.fitted_state = {
            "temperature": temperature,
            "nll_before": temperature_nll(logits, labels, 1.0),
            "nll_after": temperature_nll(logits, labels, temperature),
        }

    def apply(self, inputs: dict[str, list[InputChunk]], rows: slice, on_fit_split: bool) -> Output:
        chunks = role_inputs(inputs, "inputs", "calibrate")
        check_classes(chunks, self.classes, "calibrate")
        if "temperature" not in self.fitted_state:
            raise GraphError("calibrate must be fitted on the graph's fit split before it applies")
        scaled = as_logits(chunks[0]) / np.float32(self.fitted_state["temperature"])
        return Output("logits", scores=scaled)
