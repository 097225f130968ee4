"""Cross-entropy and label-smoothed cross-entropy."""

from __future__ import annotations

from torch import Tensor

from .common import ClassificationLoss, check_number, smooth_targets


class CrossEntropyLoss(ClassificationLoss):
    """Cross-entropy ``-sum_k y_k log p_k`` with ``p = softmax(logits)``.

    With integer targets this is ``torch.nn.functional.cross_entropy``; with soft targets (mixup,
    cutmix) it is the expectation of the per-class cross-entropy under the target distribution.
    """

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        return -(target * logits.log_softmax(dim=1)).sum(dim=1)


class LabelSmoothingCrossEntropy(ClassificationLoss):
    """Cross-entropy against smoothed targets: 1 - eps on the target class, eps/(K-1) elsewhere.

    The smoothing mass goes to the *other* classes only, so the target class keeps exactly
    ``1 - smoothing``. timm's ``LabelSmoothingCrossEntropy`` instead spreads eps/K over every class,
    the target included (target gets 1 - eps + eps/K), so the two give different numbers for the
    same ``smoothing``. Soft targets are smoothed as ``(1 - eps) * y + eps/(K-1) * (1 - y)``.
    """

    def __init__(self, smoothing: float = 0.1, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.smoothing = check_number("smoothing", smoothing, low=0.0, high=1.0, high_open=True)

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        target = smooth_targets(target, self.smoothing)
        return -(target * logits.log_softmax(dim=1)).sum(dim=1)

    def extra_repr(self) -> str:
        return f"smoothing={self.smoothing}, {super().extra_repr()}"
