"""A model's forward FLOPs per image, counted by torch's own ``FlopCounterMode``.

Counted once per (model, test size) on one image (batch 1, three channels, zeros) on the CPU
in eval mode, before the model moves to its device: the cost of one small forward pass, not
of a batch. The count is ``FlopCounterMode``'s: matrix products and convolutions, a
multiply-add as 2 FLOPs (elementwise ops, norms and activations are not counted). The
predictor multiplies it by the views (``ee_tta.cost``) for the ``cost`` attr's ``gflops``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def forward_gflops(model: nn.Module, sizes: Sequence[int], channels: int = 3) -> dict[int, float]:
    """Test size → GFLOPs (1e9) of ``model``'s forward pass on one ``size``×``size`` image.

    A size the model cannot take is left out (the predictor refuses it with its own message).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device
    counted: dict[int, float] = {}
    try:
        for size in sizes:
            image = torch.zeros(1, channels, size, size, device=device)
            counter = FlopCounterMode(display=False)
            try:
                with torch.no_grad(), counter:
                    model(image)
            except (RuntimeError, ValueError, AssertionError):
                continue
            counted[size] = counter.get_total_flops() / 1e9
    finally:
        model.train(was_training)
    return counted
