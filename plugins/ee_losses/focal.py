"""Softmax focal loss (Lin et al. 2017), the shared maths of ``focal`` and ``dsb_focal``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ensemble_engine.errors import RecipeError

from .common import ClassificationLoss, check_class_weights, check_number

# (1 - p)^gamma has an infinite derivative at 1 - p = 0 when gamma < 1; flooring 1 - p here
# changes the loss by less than 1e-30 and keeps the gradient finite.
_MIN_ONE_MINUS_P = 1e-30


def focal_per_sample(
    logits: Tensor, target: Tensor, gamma: float, class_weights: Tensor | None = None
) -> Tensor:
    """``-sum_k y_k a_k (1 - p_k)^gamma log p_k`` per row (``a_k = 1`` without class weights)."""
    log_p = logits.log_softmax(dim=1)
    one_minus_p = (-torch.expm1(log_p)).clamp_min(_MIN_ONE_MINUS_P)
    terms = -target * one_minus_p.pow(gamma) * log_p
    if class_weights is not None:
        if class_weights.numel() != logits.shape[1]:
            raise RecipeError(
                f"focal loss has {class_weights.numel()} class weights for {logits.shape[1]} "
                f"classes; give one weight per class"
            )
        terms = terms * class_weights.to(device=logits.device, dtype=logits.dtype)
    return terms.sum(dim=1)


class FocalLoss(ClassificationLoss):
    """Softmax focal loss ``-alpha_y (1 - p_y)^gamma log p_y``.

    ``gamma`` (default 2) down-weights examples the model already gets right; ``gamma = 0`` is
    cross-entropy. ``alpha`` is an optional list of one weight per class (default: all 1). Soft
    targets give ``-sum_k y_k alpha_k (1 - p_k)^gamma log p_k``.
    """

    def __init__(
        self, gamma: float = 2.0, alpha: Sequence[float] | None = None, reduction: str = "mean"
    ) -> None:
        super().__init__(reduction)
        self.gamma = check_number("gamma", gamma, low=0.0)
        self.register_buffer("alpha", check_class_weights("alpha", alpha))

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        return focal_per_sample(logits, target, self.gamma, self.alpha)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, {super().extra_repr()}"
