"""Image transforms of the seed recipe, from torchvision and timm parts.

Training: random resized crop, horizontal and vertical flips, colour jitter, timm's AutoAugment,
additive Gaussian noise, ImageNet normalisation; mixup/cutmix act on whole batches afterwards.
Evaluation is timm's: resize to ``size / crop_pct``, then a centre crop of ``size``.

All randomness comes from torch's and Python's global generators (AutoAugment uses ``random``,
mixup uses numpy's), which the training loop seeds and checkpoints, so runs repeat exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from ee_data.batches import BatchNormalize
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup, create_transform
from timm.data.auto_augment import (
    augment_and_mix_transform,
    auto_augment_transform,
    rand_augment_transform,
)
from torchvision import transforms as T

if TYPE_CHECKING:
    from .recipe import Recipe

MEAN = tuple(IMAGENET_DEFAULT_MEAN)
STD = tuple(IMAGENET_DEFAULT_STD)
EVAL_INTERPOLATION = "bilinear"  # as in training's random resized crops


class GaussianNoise:
    """Add zero-mean Gaussian noise to an image tensor in [0, 1], then clip it back to [0, 1].

    With probability ``p`` an image gets noise of its own standard deviation σ, drawn uniformly
    from ``sigma`` on the 0–255 scale: mild sensor-like noise of varying strength, as in the
    seed recipe.
    """

    def __init__(self, p: float = 1.0, sigma: tuple[float, float] = (1.0, 20.0)) -> None:
        self.p = p
        self.sigma = sigma

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.p <= 0 or (self.p < 1 and torch.rand(()).item() >= self.p):
            return image
        low, high = self.sigma
        sigma = (low + (high - low) * torch.rand(()).item()) / 255.0
        return (image + sigma * torch.randn_like(image)).clamp_(0.0, 1.0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, sigma={self.sigma})"


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
        steps.append(GaussianNoise(recipe.noise, recipe.noise_sigma))
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

    Label smoothing stays 0 here: smoothing belongs to the loss (``label_smoothing``), so that
    a recipe's loss means the same with and without mixup.
    """
    if recipe.mixup <= 0 and recipe.cutmix <= 0:
        return None
    return Mixup(
        mixup_alpha=recipe.mixup,
        cutmix_alpha=recipe.cutmix,
        label_smoothing=0.0,
        num_classes=num_classes,
    )
