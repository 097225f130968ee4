"""Bi-tempered logistic loss (Amid, Warmuth, Anil, Koren 2019, arXiv:1906.03361).

Two temperatures make logistic loss robust to label noise: ``t1 < 1`` bounds the loss (outliers far
on the wrong side cost at most a constant) and ``t2 > 1`` gives the "tempered softmax" a heavy
tail (mislabelled examples near the boundary pull less). With ``t1 = t2 = 1`` it is cross-entropy.

The algorithm follows the authors' reference code:

- ``log_t(x) = (x^(1-t) - 1) / (1 - t)`` and ``exp_t(x) = [1 + (1-t) x]_+^(1/(1-t))``;
- the tempered softmax ``p = exp_t(a - lambda(a))`` has no closed-form normaliser ``lambda``: it is
  found by a fixed-point iteration for ``t2 > 1``, by binary search for ``t2 < 1`` (where ``exp_t``
  has finite support) and is ``logsumexp`` for ``t2 = 1``; ``num_iters`` steps each;
- the loss per row is the Bregman divergence
  ``sum_k [y_k (log_t1(y_k + 1e-10) - log_t1(p_k)) - (y_k^(2-t1) - p_k^(2-t1)) / (2-t1)]``;
- the gradient is the closed form of the paper, not autograd through the iteration.

Being a divergence, the loss is zero when ``p`` equals ``y``: for soft targets at ``t1 = t2 = 1``
it is ``KL(y || p)``, i.e. cross-entropy minus the (constant) entropy of ``y``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ensemble_engine import RecipeError

from .common import ClassificationLoss, check_int, check_number, smooth_targets


def log_t(u: Tensor, t: float) -> Tensor:
    """Tempered logarithm; ``log`` at ``t = 1``."""
    if t == 1.0:
        return u.log()
    return (u.pow(1.0 - t) - 1.0) / (1.0 - t)


def exp_t(u: Tensor, t: float) -> Tensor:
    """Tempered exponential, the inverse of ``log_t``; ``exp`` at ``t = 1``."""
    if t == 1.0:
        return u.exp()
    return (1.0 + (1.0 - t) * u).clamp_min(0.0).pow(1.0 / (1.0 - t))


def compute_normalization_fixed_point(activations: Tensor, t: float, num_iters: int = 5) -> Tensor:
    """Normaliser ``lambda`` [N, 1] of the tempered softmax for ``t > 1`` by fixed-point iteration.

    With ``a0 = a - max(a)``, iterate ``a_{i+1} = a0 * Z(a_i)^(1-t)`` with ``Z(a) = sum exp_t(a)``;
    the result is ``-log_t(1/Z) + max(a)``.
    """
    mu = activations.amax(dim=-1, keepdim=True)
    shifted = activations - mu
    current = shifted
    for _ in range(num_iters):
        partition = exp_t(current, t).sum(dim=-1, keepdim=True)
        current = shifted * partition.pow(1.0 - t)
    partition = exp_t(current, t).sum(dim=-1, keepdim=True)
    return -log_t(1.0 / partition, t) + mu


def compute_normalization_binary_search(
    activations: Tensor, t: float, num_iters: int = 5
) -> Tensor:
    """Normaliser ``lambda`` [N, 1] of the tempered softmax for ``t < 1`` by bisection.

    ``sum_k exp_t(a_k - mu - lambda)`` decreases in ``lambda``; it is at least 1 at ``lambda = 0``
    and at most 1 at ``-log_t(1/d)``, ``d`` the number of classes inside the support of ``exp_t``.
    Each step halves that bracket; the midpoint is returned.
    """
    mu = activations.amax(dim=-1, keepdim=True)
    shifted = activations - mu
    effective_dim = (shifted > -1.0 / (1.0 - t)).sum(dim=-1, keepdim=True).to(shifted.dtype)
    lower = torch.zeros_like(effective_dim)
    upper = -log_t(1.0 / effective_dim, t)
    for _ in range(num_iters):
        middle = (upper + lower) / 2.0
        total = exp_t(shifted - middle, t).sum(dim=-1, keepdim=True)
        too_small = total < 1.0
        upper = torch.where(too_small, middle, upper)
        lower = torch.where(too_small, lower, middle)
    return (upper + lower) / 2.0 + mu


def compute_normalization(activations: Tensor, t: float, num_iters: int = 5) -> Tensor:
    if t == 1.0:
        return activations.logsumexp(dim=-1, keepdim=True)
    if t > 1.0:
        return compute_normalization_fixed_point(activations, t, num_iters)
    return compute_normalization_binary_search(activations, t, num_iters)


def tempered_softmax(activations: Tensor, t: float, num_iters: int = 5) -> Tensor:
    """``exp_t(a - lambda(a))``: a softmax with a heavier (``t > 1``) or finite (``t < 1``) tail."""
    return exp_t(activations - compute_normalization(activations, t, num_iters), t)


def _bi_tempered_rows(probs: Tensor, labels: Tensor, t1: float) -> Tensor:
    # y * (log_t(y) - log_t(p)) is taken as 0 where y == 0, as in KL; otherwise log_t1(0) = -inf
    # for t1 >= 1 would turn an absent class into NaN.
    cross = labels * (log_t(labels + 1e-10, t1) - log_t(probs, t1))
    cross = torch.where(labels > 0, cross, torch.zeros_like(cross))
    beta = 2.0 - t1
    return (cross - (labels.pow(beta) - probs.pow(beta)) / beta).sum(dim=-1)


class _BiTemperedFunction(torch.autograd.Function):
    """Loss per row with the paper's closed-form gradient (see the module docstring)."""

    @staticmethod
    def forward(
        ctx: Any, activations: Tensor, labels: Tensor, t1: float, t2: float, num_iters: int
    ) -> Tensor:
        probs = tempered_softmax(activations, t2, num_iters)
        if t1 == 1.0 and t2 == 1.0:
            log_p = activations.log_softmax(dim=-1)
            loss = (labels * ((labels + 1e-10).log() - log_p)).sum(dim=-1)
        else:
            loss = _bi_tempered_rows(probs, labels, t1)
        ctx.save_for_backward(probs, labels)
        ctx.temperatures = (t1, t2)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Tensor | None, ...]:
        probs, labels = ctx.saved_tensors
        t1, t2 = ctx.temperatures
        positive = probs > 0
        # Outside the support of exp_t (p == 0, only for t2 < 1) the loss is flat in that logit.
        forget = torch.where(positive, probs.clamp_min(1e-38).pow(t2 - t1), torch.zeros_like(probs))
        delta = (probs - labels) * forget
        escorts = probs.pow(t2)
        escorts = escorts / escorts.sum(dim=-1, keepdim=True)
        grad = delta - escorts * delta.sum(dim=-1, keepdim=True)
        return grad * grad_loss.unsqueeze(-1), None, None, None, None


def bi_tempered_logistic_loss(
    activations: Tensor,
    labels: Tensor,
    t1: float,
    t2: float,
    smoothing: float = 0.0,
    num_iters: int = 5,
) -> Tensor:
    """Bi-tempered loss per row for logits [N, C] and soft labels [N, C]."""
    labels = smooth_targets(labels, smoothing)
    return _BiTemperedFunction.apply(activations, labels, t1, t2, num_iters)


class BiTemperedLogisticLoss(ClassificationLoss):
    """Bi-tempered logistic loss; defaults ``t1 = 0.8``, ``t2 = 1.2`` as in the paper's examples.

    ``smoothing`` is label smoothing applied to the (one-hot or soft) target before the loss, as
    in the reference: ``y * (1 - eps*K/(K-1)) + eps/(K-1)``. ``num_iters`` sets the fixed-point or
    bisection steps of the tempered softmax (bisection halves its bracket per step, so ``t2 < 1``
    may want more than the default 5). ``t2 < 1`` requires ``t1 < 1``: with ``t1 >= 1`` a class
    the tempered softmax gives probability 0 would cost an infinite loss.
    """

    def __init__(
        self,
        t1: float = 0.8,
        t2: float = 1.2,
        smoothing: float = 0.0,
        num_iters: int = 5,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction)
        self.t1 = check_number("t1", t1, low=0.0, high=2.0, high_open=True)
        self.t2 = check_number("t2", t2, low=0.0, low_open=True)
        if self.t2 < 1.0 <= self.t1:
            raise RecipeError(
                f"bi_tempered with t2={t2} < 1 needs t1 < 1 (got t1={t1}); otherwise classes "
                f"outside the tempered softmax's support give an infinite loss"
            )
        self.smoothing = check_number("smoothing", smoothing, low=0.0, high=1.0, high_open=True)
        self.num_iters = check_int("num_iters", num_iters, low=1)

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        return bi_tempered_logistic_loss(
            logits, target, self.t1, self.t2, self.smoothing, self.num_iters
        )

    def extra_repr(self) -> str:
        return (
            f"t1={self.t1}, t2={self.t2}, smoothing={self.smoothing}, "
            f"num_iters={self.num_iters}, {super().extra_repr()}"
        )
