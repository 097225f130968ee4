"""The parts of a training run made from the recipe: device, backbone, optimiser, schedule.

All from timm's factories: the backbone untrained (``pretrained=False``), Xavier-uniform
initialised as in the seed unless ``init=default``; SGD with classical momentum (the seed's)
or Nesterov's (timm's ``sgd``); timm's cosine schedule with linear warm-up, stepped per epoch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import timm
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn

from ensemble_engine import RecipeError

if TYPE_CHECKING:
    from .recipe import Recipe


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RecipeError(f"device {device!r} needs CUDA, which is not available; use --device cpu")
    return torch.device(device)


def build_model(recipe: Recipe, num_classes: int) -> nn.Module:
    """The timm backbone, untrained, with Xavier-uniform conv/linear weights unless init=default."""
    model = timm.create_model(recipe.backbone, pretrained=False, num_classes=num_classes)
    if recipe.init == "xavier":
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
    return model


class WithFeatures(nn.Module):
    """``model(x)`` as ``(logits, features)`` from one forward pass, for losses that pool features.

    ``features`` are the penultimate (pre-logit) features: timm's ``forward_features`` then
    ``forward_head(..., pre_logits=True)``, and the logits are the classifier applied to them,
    the same operations as ``model(x)`` (tested for ResNet, EfficientNet, ViT, MobileNetV3 and
    RegNet heads; a head that drops out *after* its pre-logits, as MobileNetV3's, would skip
    that dropout, which the recipes leave at timm's default of 0). Wrapped in
    DistributedDataParallel it syncs gradients as the model would; the run saves the model.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
        if not isinstance(classifier, nn.Module) or not hasattr(model, "forward_head"):
            raise RecipeError(
                f"{type(model).__name__} has no single classifier after its pre-logit features, "
                "which a loss that pools features needs; pick another backbone or loss"
            )
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return self.model.get_classifier()(features), features


def build_optimizer(recipe: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with classical momentum (timm's ``momentum``; ``nesterov`` picks timm's ``sgd``).

    With torch's fused kernel where the parameters' device has one (build after moving the
    model): one pass over all parameters per step instead of a loop over them, several times
    faster on a CPU, and under AMP on a GPU the GradScaler hands its overflow flag to the kernel
    instead of reading it back to the host every step. The same update up to float rounding.
    """
    return create_optimizer_v2(
        model,
        opt="sgd" if recipe.nesterov else "momentum",
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        momentum=recipe.momentum,
        **({"fused": True} if has_fused_kernels(model) else {}),
    )


def has_fused_kernels(model: nn.Module) -> bool:
    """Whether torch has fused optimiser kernels for the device of ``model``'s parameters."""
    try:  # the list torch's optimisers check ``fused=True`` against (a private torch name)
        from .torch_internals import fused_kernel_devices
    except ImportError:
        return False
    devices = {p.device.type for p in model.parameters()}
    return len(devices) == 1 and devices <= set(fused_kernel_devices())


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, keeping how this optimiser steps (fused or not).

    torch restores each group's ``fused``/``foreach`` from the checkpoint; a run saved without
    the fused kernel (an older ee, another device) would then step unfused while GradScaler,
    seeing a fused optimiser, hands it its scale, which the unfused step refuses.
    """
    keys = ("fused", "foreach")
    built = [{k: g[k] for k in keys if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, flags in zip(optimizer.param_groups, built, strict=True):
        group.update(flags)


def build_scheduler(recipe: Recipe, optimizer: torch.optim.Optimizer) -> Any:
    """timm's cosine schedule with linear warm-up from ``warmup_lr``, stepped per epoch."""
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched="cosine",
        num_epochs=recipe.epochs,
        warmup_epochs=recipe.warmup_epochs,
        warmup_lr=recipe.warmup_lr,
        min_lr=recipe.min_lr,
    )
    return scheduler
