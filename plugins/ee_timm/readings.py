"""The numbers a training run reads off its device: the training loss and the validation sums.

Reading a CUDA tensor's value (``.item()``) waits for every queued kernel: once per step it
stalls the launch queue, and the GPU idles while the host catches up. Both readers here keep
their values on the device and read them in one go: ``LossWatch`` every ``every`` steps (and
at the first step and the epoch's end), ``evaluation_sums`` once per validation pass. The sums
are the same float64 additions, in the same order, as reading each value as it comes, so the
numbers do not depend on when they are read. On the CPU a reading costs nothing, and the loss is
read, and checked, at every step.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ensemble_engine import RecipeError

READ_EVERY = 50  # steps between readings of the loss on a GPU, as timm's log_interval


class DivergedError(RecipeError):
    """The training loss became NaN or infinite."""


class LossWatch:
    """One epoch's training losses: summed per image, checked for divergence, read in batches.

    ``add`` is called with each step's loss before its backward pass. Readings fall on the same
    steps in every run and on every rank (the first, then every ``every``-th, then the epoch's
    end), never on a timer. Where a reading finds a loss that is not finite it raises
    ``DivergedError`` naming the first such step; a run that reads only every few steps has by
    then taken a few steps on bad gradients, which matters nothing as long as the caller reads
    (``total``) before it writes anything.
    """

    def __init__(self, epoch: int, every: int = 1) -> None:
        self.epoch, self.every = epoch, max(1, every)
        self.steps = 0
        self.loss_sum, self.images = 0.0, 0
        self.last = math.nan  # the latest loss read, for display
        self._pending: list[tuple[torch.Tensor, int]] = []

    def add(self, loss: torch.Tensor, images: int) -> None:
        """Record one step's mean loss over ``images``; read now if a reading is due."""
        self._pending.append((loss.detach(), images))
        self.steps += 1
        if self.steps == 1 or len(self._pending) >= self.every:
            self.read()

    def read(self) -> None:
        """Read the pending losses (one host-device sync), check and add them."""
        if not self._pending:
            return
        first = self.steps - len(self._pending)  # 0-based index of the first pending step
        losses = [loss.double() for loss, _ in self._pending]  # exact for any float dtype
        values = [losses[0].item()] if len(losses) == 1 else torch.stack(losses).tolist()
        for offset, value in enumerate(values):
            if not math.isfinite(value):
                raise DivergedError(
                    f"training diverged: loss is {value} at epoch {self.epoch + 1}, batch "
                    f"{first + offset + 1}; lower --lr, raise warmup_epochs (--set) or try --no-amp"
                )
        for value, (_, images) in zip(values, self._pending, strict=True):
            self.loss_sum += value * images
            self.images += images
        self.last = values[-1]
        self._pending.clear()

    def total(self) -> tuple[float, int]:
        """(summed loss × images, images) of every step, all read and checked."""
        self.read()
        return self.loss_sum, self.images


@torch.no_grad()
def evaluation_sums(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    autocast: Callable = contextlib.nullcontext,
) -> list[float]:
    """[top-1 hits, top-5 hits, summed cross-entropy, images]: sums, which add over ranks.

    The sums stay on the device until the pass ends; the loss adds each batch's float32 sum in
    float64, as Python would add the batches' values read one by one.
    """
    model.eval()
    hits_sum = torch.zeros(2, dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n = 0
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with autocast():
            logits = model(images).float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == targets[:, None]
        hits_sum += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum()])
        loss_sum += nn.functional.cross_entropy(logits, targets, reduction="sum").double()
        n += len(targets)
    top1, top5 = hits_sum.tolist()
    return [float(top1), float(top5), loss_sum.item(), float(n)]


def evaluate(
    model: nn.Module, loader: Any, device: torch.device, autocast: Callable = contextlib.nullcontext
) -> tuple[float, float, float]:
    """(top-1 %, top-5 %, mean cross-entropy) on ``loader``; NaNs when it is empty.

    The loss is plain cross-entropy whatever the training loss, so runs compare on one scale.
    """
    return percentages(*evaluation_sums(model, loader, device, autocast))


def percentages(top1: float, top5: float, loss: float, n: float) -> tuple[float, float, float]:
    """Sums of ``evaluation_sums`` as (top-1 %, top-5 %, mean loss); NaNs for no images."""
    if n == 0:
        return math.nan, math.nan, math.nan
    return 100.0 * top1 / n, 100.0 * top5 / n, loss / n
