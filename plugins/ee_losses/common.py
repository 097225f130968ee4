"""What every loss in this plugin shares: parameter checks, target handling, float32 maths.

Each loss subclasses ``ClassificationLoss`` and writes only ``per_sample(logits, target)`` for a
float logits matrix [N, C] and a soft target matrix [N, C] (rows summing to one). The base class
does the rest the same way for all of them:

- integer targets [N] become one-hot rows, so one formula serves hard labels and the soft targets
  that mixup / cutmix produce (for every loss here the one-hot case reduces to the usual formula);
- the maths runs in float32 (float64 stays float64) with autocast switched off, because losses
  are where float16 / bfloat16 underflow and overflow turn into NaN gradients;
- ``reduction`` is applied last.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ensemble_engine import RecipeError

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise RecipeError(
            f"loss reduction {reduction!r} is not supported; use one of {', '.join(REDUCTIONS)}"
        )
    return reduction


def check_number(
    name: str,
    value: float,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a float, or a ``RecipeError`` that names the parameter and its valid range."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RecipeError(f"loss parameter {name}={value!r} must be a number") from None
    too_low = number <= low if low_open else number < low
    too_high = number >= high if high_open else number > high
    if too_low or too_high or math.isnan(number):
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        raise RecipeError(f"loss parameter {name}={value!r} must lie in {left}{low}, {high}{right}")
    return number


def check_int(name: str, value: int, *, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise RecipeError(f"loss parameter {name}={value!r} must be an integer >= {low}")
    return value


def check_class_weights(name: str, values: Sequence[float] | None) -> Tensor | None:
    """Per-class weights as a float32 tensor (None stays None: every class weighs 1)."""
    if values is None:
        return None
    try:
        weights = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
    except (TypeError, ValueError):
        raise RecipeError(
            f"loss parameter {name} must be a list of numbers, one per class"
        ) from None
    if weights.ndim != 1 or weights.numel() == 0 or not bool(torch.all(weights >= 0)):
        raise RecipeError(f"loss parameter {name} must be a non-empty list of numbers >= 0")
    return weights


def as_float(logits: Tensor) -> Tensor:
    """``logits`` in float32, or float64 when they already are."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def soft_targets(target: Tensor, logits: Tensor) -> Tensor:
    """Targets as an [N, C] matrix of class probabilities in the dtype of ``logits``.

    Class indices out of range are refused with a clear error when the targets are on the CPU.
    On a GPU that check would read the targets back to the host, a wait for the device at every
    training step; there, as in torch's own ``one_hot``, an index out of range ends in the
    device's assert instead (the engine's loaders give indices of the data's own classes).
    """
    n, num_classes = logits.shape
    if target.ndim == 1 and not target.is_floating_point() and target.dtype != torch.bool:
        if target.shape[0] != n:
            raise RecipeError(f"loss got {target.shape[0]} targets for {n} rows of logits")
        if target.numel() and target.device.type == "cpu":
            low, high = torch.aminmax(target)
            if int(low) < 0 or int(high) >= num_classes:
                raise RecipeError(
                    f"target class {int(low) if int(low) < 0 else int(high)} is out of range for "
                    f"{num_classes} logits; make the model's num_classes match the dataset"
                )
        return F.one_hot(target.long(), num_classes).to(logits.dtype)
    if target.ndim == 2 and target.is_floating_point():
        if tuple(target.shape) != (n, num_classes):
            raise RecipeError(
                f"soft targets of shape {tuple(target.shape)} do not match logits of shape "
                f"{(n, num_classes)}"
            )
        return target.to(logits.dtype)
    raise RecipeError(
        f"loss targets must be class indices [N] (integer) or probabilities [N, C] (float), "
        f"got {target.dtype} of shape {tuple(target.shape)}"
    )


def smooth_targets(target: Tensor, smoothing: float) -> Tensor:
    """Move ``smoothing`` of each row's mass from its classes onto the *other* classes.

    ``(1 - eps) * y + eps / (K - 1) * (1 - y)``: a one-hot row becomes 1 - eps on its class and
    eps / (K - 1) elsewhere. Written out this is ``y * (1 - eps*K/(K-1)) + eps/(K-1)``, the form
    in the bi-tempered reference code, so both losses smooth identically.
    """
    if smoothing == 0.0:
        return target
    num_classes = target.shape[1]
    if num_classes < 2:
        raise RecipeError("label smoothing needs at least 2 classes")
    off = smoothing / (num_classes - 1)
    return (1.0 - smoothing) * target + off * (1.0 - target)


def reduce_loss(per_sample: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


class ClassificationLoss(nn.Module):
    """Base of every loss here: ``forward(logits [N, C], target [N] or [N, C]) -> loss``.

    Subclasses implement ``per_sample(logits, target) -> [N]`` on float32 (or float64) logits and
    soft targets; ``forward`` prepares both and applies ``reduction``.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.ndim != 2:
            raise RecipeError(
                f"loss expects logits of shape [N, C], got shape {tuple(logits.shape)}"
            )
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = as_float(logits)
            per_sample = self.per_sample(logits, soft_targets(target, logits))
            return reduce_loss(per_sample, self.reduction)

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
