"""Images of a split at a test size, the way timm evaluates: resize, centre crop, normalise.

timm's eval transform resizes the shorter side to ``floor(test_size / crop_pct)`` with the
model's interpolation and centre-crops ``test_size``: ``crop_pct = 1`` keeps the whole image,
the usual 0.875 trims a border. Whatever the caller leaves out comes from the model's
``pretrained_cfg`` (timm's ``resolve_model_data_config``), so a model trained with other
normalisation is evaluated with its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from ee_data import load_image
from timm.data import create_transform, resolve_model_data_config
from torch.utils.data import Dataset

from ensemble_engine.data import Sample
from ensemble_engine.errors import RecipeError


@dataclass(frozen=True)
class EvalConfig:
    """How images are prepared for the model (independent of the test size)."""

    crop_pct: float
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def transform(self, test_size: int):  # -> a torchvision transform: PIL image -> tensor
        """timm's eval transform for a square ``test_size``."""
        return create_transform(
            input_size=(3, test_size, test_size),
            is_training=False,
            crop_pct=self.crop_pct,
            interpolation=self.interpolation,
            mean=self.mean,
            std=self.std,
        )


def eval_config(
    model: torch.nn.Module,
    *,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> EvalConfig:
    """The eval settings: the given values, else the model's pretrained config, else timm's."""
    cfg = resolve_model_data_config(model)
    crop = float(crop_pct if crop_pct is not None else cfg.get("crop_pct") or 1.0)
    if not 0 < crop <= 1:
        raise RecipeError(f"crop_pct must lie in (0, 1], got {crop}; 1 keeps the whole image")
    return EvalConfig(
        crop_pct=crop,
        interpolation=str(interpolation or cfg.get("interpolation") or "bicubic"),
        mean=tuple(float(m) for m in (mean if mean is not None else cfg["mean"])),
        std=tuple(float(s) for s in (std if std is not None else cfg["std"])),
    )


def check_test_size(model: torch.nn.Module, test_size: int) -> None:
    """Refuse a size that a fixed-input-size backbone cannot take."""
    if not isinstance(test_size, int) or isinstance(test_size, bool) or test_size < 1:
        raise RecipeError(f"test size must be a positive integer, got {test_size!r}")
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    if not cfg.get("fixed_input_size"):
        return
    native = tuple(cfg.get("input_size", ()))[-2:]
    if native and native != (test_size, test_size):
        arch = cfg.get("architecture") or type(model).__name__
        raise RecipeError(
            f"backbone {arch} takes only {native[0]}x{native[1]} inputs, not test size "
            f"{test_size}; predict at {native[0]} or use a backbone without a fixed input size"
        )


class SplitImages(Dataset):
    """The split's images, in sample order, as normalised tensors (for a ``DataLoader``)."""

    def __init__(self, samples: Sequence[Sample], transform) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(load_image(self.samples[index].path))
