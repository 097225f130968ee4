"""Taylor cross-entropy (Feng et al. 2020, "Can cross entropy loss be robust to label noise?").

Cross-entropy is ``-log p = sum_{i>=1} (1 - p)^i / i``. Keeping only the first ``t`` terms gives a
bounded loss that tolerates label noise better: ``t = 1`` is MAE-like (``1 - p``), and the loss
approaches cross-entropy as ``t`` grows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .common import ClassificationLoss, check_int


def taylor_series(q: Tensor, order: int) -> Tensor:
    """``sum_{i=1..order} q^i / i`` elementwise."""
    total = torch.zeros_like(q)
    power = torch.ones_like(q)
    for i in range(1, order + 1):
        power = power * q
        total = total + power / i
    return total


class TaylorCrossEntropy(ClassificationLoss):
    """``L = sum_{i=1..t} (1 - p_y)^i / i`` with ``t = order`` (default 2).

    Soft targets take the expectation over the target distribution:
    ``sum_k y_k sum_i (1 - p_k)^i / i``. ``1 - p`` is computed as ``-expm1(log p)`` so that it keeps
    its precision when ``p`` is close to one.
    """

    def __init__(self, order: int = 2, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.order = check_int("order", order, low=1)

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        one_minus_p = -torch.expm1(logits.log_softmax(dim=1))
        return (target * taylor_series(one_minus_p, self.order)).sum(dim=1)

    def extra_repr(self) -> str:
        return f"order={self.order}, {super().extra_repr()}"
