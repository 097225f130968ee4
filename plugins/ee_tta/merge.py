"""Merging the outputs of several views of one image into one row of scores.

=============  ===========================================  ===========
mode           row                                          stored kind
=============  ===========================================  ===========
mean_logits    mean of the views' logits                    logits
mean_probs     mean of the views' softmax probabilities     probs
gmean          log of the normalised geometric mean of the  logits
               views' probabilities: log_softmax of the
               mean of their log-probabilities
=============  ===========================================  ===========

``gmean`` rows are log-probabilities (each row's logsumexp is 0), so they are logits whose
softmax is the geometric mean, renormalised. Normalising keeps the top classes near 0, where
float16 storage is most precise.
"""

from __future__ import annotations

import torch

from ensemble_engine import RecipeError

MERGE_KINDS: dict[str, str] = {"mean_logits": "logits", "mean_probs": "probs", "gmean": "logits"}
DEFAULT_MERGE = "mean_logits"


def merge_kind(mode: str) -> str:
    """The prediction kind that ``mode`` writes; ``RecipeError`` for an unknown mode."""
    if mode not in MERGE_KINDS:
        raise RecipeError(f"unknown TTA merge {mode!r}; use one of {', '.join(MERGE_KINDS)}")
    return MERGE_KINDS[mode]


def merge_views(outputs: torch.Tensor, mode: str = DEFAULT_MERGE) -> torch.Tensor:
    """Merge logits [V, B, K] of V views into scores [B, K], computed in float32."""
    merge_kind(mode)
    if outputs.ndim != 3:
        shape = tuple(outputs.shape)
        raise ValueError(f"expected view outputs [views, batch, classes], got {shape}")
    logits = outputs.float()
    if mode == "mean_logits":
        return logits.mean(0)
    if mode == "mean_probs":
        return logits.softmax(-1).mean(0)
    return logits.log_softmax(-1).mean(0).log_softmax(-1)
