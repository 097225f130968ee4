"""Image transforms of the seed recipe, from torchvision and timm parts.

Training: random resized crop, horizontal and vertical flips, colour jitter, timm's AutoAugment,
additive Gaussian noise (the seed's: one grey N(0, 1) × 20 field per image), ImageNet
normalisation; timm's mixup/cutmix act on whole batches afterwards.
Evaluation is timm's: resize to ``size / crop_pct``, then a centre crop of ``size``.

All randomness comes from torch's and Python's global generators (AutoAugment uses ``random``,
mixup uses numpy's), which the training loop seeds and checkpoints, so runs repeat exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup, create_transform
from timm.data.auto_augment import (
    augment_and_mix_transform,
    auto_augment_transform,
    rand_augment_transform,
)
from torchvision import transforms as T

from ensemble_engine import BatchNormalize

if TYPE_CHECKING:
    from .recipe import Recipe

MEAN = tuple(IMAGENET_DEFAULT_MEAN)
STD = tuple(IMAGENET_DEFAULT_STD)
EVAL_INTERPOLATION = "bilinear"  # as in training's random resized crops


class GaussianNoise:
    """Add zero-mean Gaussian noise to an image tensor in [0, 1], then clip it back to [0, 1].

    With probability ``p`` an image gets noise of standard deviation σ on the 0–255 scale, drawn
    per image from U(``sigma``); ``sigma = (20, 20)`` is the fixed amplitude of the seed's
    "Gaussian noise 0, 1, 20" (``AddGaussianNoise(mean=0, variance=1, amplitude=20)``:
    20 × N(0, 1)). ``mode="channel_shared"`` (the seed's) draws one noise field per image and adds
    it to all three channels, so the noise is grey; ``"per_channel"`` draws one per channel.
    The copied AddGaussianNoise clips only at 255 and lets negative values wrap around in its
    uint8 cast; here both ends are clipped, on float pixels (no rounding to uint8).
    """

    def __init__(
        self,
        p: float = 1.0,
        sigma: tuple[float, float] = (20.0, 20.0),
        mode: str = "channel_shared",
    ) -> None:
        self.p = p
        self.sigma = sigma
        self.mode = mode

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.p <= 0 or (self.p < 1 and torch.rand(()).item() >= self.p):
            return image
        low, high = self.sigma
        sigma = (low + (high - low) * torch.rand(()).item()) / 255.0
        shape = image.shape if self.mode == "per_channel" else (1, *image.shape[1:])
        noise = torch.randn(shape, dtype=image.dtype, device=image.device)
        return (image + sigma * noise).clamp_(0.0, 1.0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, sigma={self.sigma}, mode={self.mode!r})"


def auto_augment(policy: str | None, img_size: int) -> Callable | None:
    """timm's augmentation policy ``policy`` for ``img_size`` images, or None.

    ``rand-…`` is RandAugment, ``augmix-…`` AugMix, anything else an AutoAugment policy
    (``original`` is the policy of the AutoAugment paper that the seed used).
    """
    if policy is None:
        return None
    hparams = {
        "translate_const": int(img_size * 0.45),
        "img_mean": tuple(round(255 * m) for m in MEAN),
    }
    if policy.startswith("rand"):
        return rand_augment_transform(policy, hparams)
    if policy.startswith("augmix"):
        return augment_and_mix_transform(policy, hparams)
    return auto_augment_transform(policy, hparams)


def train_transform(recipe: Recipe) -> T.Compose:
    """PIL image → normalised tensor [3, img_size, img_size] with the recipe's augmentations."""
    return T.Compose(_augmentations(recipe) + _to_normalised(recipe))


def train_transform_split(recipe: Recipe) -> tuple[T.Compose, BatchNormalize | None]:
    """``train_transform`` cut in two where that changes no value: the per-image part the
    loader runs, and what runs on each whole batch in the training process (or None).

    Without noise the loader stops at uint8 tensors, a quarter of the bytes to send between
    processes and to the device, and ``BatchNormalize`` makes the same float32 values from the
    batch at once (as timm's prefetcher does): less work for the loader processes, which share
    the cores with training. With noise, which is drawn per image, nothing is cut.
    """
    if recipe.noise > 0:
        return train_transform(recipe), None
    return T.Compose([*_augmentations(recipe), T.PILToTensor()]), BatchNormalize(MEAN, STD)


def _augmentations(recipe: Recipe) -> list[Callable]:
    """The PIL-image steps of ``train_transform``: crops, flips, colour jitter, AutoAugment."""
    steps: list[Callable] = [
        T.RandomResizedCrop(
            recipe.img_size,
            scale=recipe.scale,
            ratio=recipe.ratio,
            interpolation=T.InterpolationMode.BILINEAR,
        )
    ]
    if recipe.hflip > 0:
        steps.append(T.RandomHorizontalFlip(recipe.hflip))
    if recipe.vflip > 0:
        steps.append(T.RandomVerticalFlip(recipe.vflip))
    if any(recipe.color_jitter):
        steps.append(T.ColorJitter(*recipe.color_jitter))
    policy = auto_augment(recipe.aa, recipe.img_size)
    if policy is not None:
        steps.append(policy)
    return steps


def _to_normalised(recipe: Recipe) -> list[Callable]:
    steps: list[Callable] = [T.ToTensor()]
    if recipe.noise > 0:
        steps.append(GaussianNoise(recipe.noise, recipe.noise_sigma, recipe.noise_mode))
    steps.append(T.Normalize(MEAN, STD))
    return steps


def eval_transform(size: int, crop_pct: float) -> Callable:
    """timm's evaluation transform: resize to ``size / crop_pct``, centre crop, normalise."""
    return create_transform(
        input_size=size,
        is_training=False,
        crop_pct=crop_pct,
        interpolation=EVAL_INTERPOLATION,
        mean=MEAN,
        std=STD,
    )


def batch_mixer(recipe: Recipe, num_classes: int) -> Mixup | None:
    """timm's mixup/cutmix on batches, or None when both alphas are 0.

    timm's ``Mixup`` in batch mode: each batch is mixed with probability ``mixup_prob``, by
    cutmix with probability ``mixup_switch_prob`` (else mixup), its targets smoothed by
    ``mixup_smoothing`` (0 in both profiles: smoothing belongs to the loss, ``label_smoothing``,
    so a recipe's loss means the same with and without mixup).
    """
    if recipe.mixup <= 0 and recipe.cutmix <= 0:
        return None
    return Mixup(
        mixup_alpha=recipe.mixup,
        cutmix_alpha=recipe.cutmix,
        prob=recipe.mixup_prob,
        switch_prob=recipe.mixup_switch_prob,
        label_smoothing=recipe.mixup_smoothing,
        num_classes=num_classes,
    )
