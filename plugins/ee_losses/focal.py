"""Focal loss (Lin et al. 2017): the softmax form (``focal``, ``dsb_focal form=softmax``) and the
sigmoid form of class-balanced focal loss (Cui et al. 2019), which ``dsb_focal`` uses by default."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ensemble_engine import RecipeError

from .common import ClassificationLoss, check_class_weights, check_number

# (1 - p)^gamma has an infinite derivative at 1 - p = 0 when gamma < 1; flooring 1 - p here
# changes the loss by less than 1e-30 and keeps the gradient finite.
_MIN_ONE_MINUS_P = 1e-30


def _weights_for(logits: Tensor, class_weights: Tensor) -> Tensor:
    """One weight per class, on the logits' device and dtype; another count is a RecipeError."""
    if class_weights.numel() != logits.shape[1]:
        raise RecipeError(
            f"focal loss has {class_weights.numel()} class weights for {logits.shape[1]} "
            f"classes; give one weight per class"
        )
    return class_weights.to(device=logits.device, dtype=logits.dtype)


def focal_per_sample(
    logits: Tensor, target: Tensor, gamma: float, class_weights: Tensor | None = None
) -> Tensor:
    """``-sum_k y_k a_k (1 - p_k)^gamma log p_k`` per row (``a_k = 1`` without class weights)."""
    log_p = logits.log_softmax(dim=1)
    one_minus_p = (-torch.expm1(log_p)).clamp_min(_MIN_ONE_MINUS_P)
    terms = -target * one_minus_p.pow(gamma) * log_p
    if class_weights is not None:
        terms = terms * _weights_for(logits, class_weights)
    return terms.sum(dim=1)


def sigmoid_focal_per_sample(
    logits: Tensor, target: Tensor, gamma: float, class_weights: Tensor | None = None
) -> Tensor:
    """Class-weighted sigmoid focal loss per row, ``sum_c y_c w_c L(z, c)``.

    For a sample of class c, ``L(z, c) = -sum_k (1 - p_tk)^gamma log p_tk`` over all classes k
    with ``p_tk = sigmoid(z_k)`` for k = c and ``1 - sigmoid(z_k)`` otherwise (one-vs-all, eq. 7
    of the seed; Cui et al.'s class-balanced focal loss), and the sample's weight is its class's,
    ``w_c`` (eq. 8). A soft target gives the expectation over its classes, so a mixup/cutmix row
    ``lam a + (1 - lam) b`` costs ``lam w_a L(z, a) + (1 - lam) w_b L(z, b)``. Written out:
    ``L(z, c) = pos_c - neg_c + sum_k neg_k`` with ``pos_k = -(1 - s_k)^gamma log s_k`` and
    ``neg_k = -s_k^gamma log(1 - s_k)``, all from ``logsigmoid`` (finite at any logit).
    """
    log_s, log_1ms = F.logsigmoid(logits), F.logsigmoid(-logits)
    pos = -torch.exp(gamma * log_1ms) * log_s
    neg = -torch.exp(gamma * log_s) * log_1ms
    weighted = target
    if class_weights is not None:
        weighted = target * _weights_for(logits, class_weights)
    return (weighted * (pos - neg)).sum(dim=1) + weighted.sum(dim=1) * neg.sum(dim=1)


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
