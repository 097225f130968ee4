"""The training transform cut into a per-image uint8 part and a per-batch normalisation."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from ee_timm.producer import training_samples
from ee_timm.recipe import resolve_recipe
from ee_timm.transforms import BatchNormalize, train_transform, train_transform_split
from helpers import small_digits
from PIL import Image
from rich.console import Console

RECIPES = [
    {},
    {"set": {"color_jitter": "0.4,0.4,0.4,0.1"}, "vflip": True, "aa": "original"},
    {"set": {"scale": "0.08,1"}, "img_size": 40},
]


def images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (21, 27, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.mark.parametrize("overrides", RECIPES)
def test_split_transform_gives_the_same_floats_bit_for_bit(overrides):
    recipe = resolve_recipe("resnet10t-ce", overrides, defaults="digits")
    full = train_transform(recipe)
    per_image, per_batch = train_transform_split(recipe)
    assert per_batch is not None
    expected, parts = [], []
    for i, image in enumerate(images(12)):
        for out, transform in ((expected, full), (parts, per_image)):
            torch.manual_seed(i)
            random.seed(i)
            out.append(transform(image))
    assert all(p.dtype == torch.uint8 for p in parts)
    batch = per_batch(torch.stack(parts))
    assert batch.dtype == torch.float32 and torch.equal(batch, torch.stack(expected))


def test_noise_is_drawn_per_image_so_nothing_is_cut():
    recipe = resolve_recipe("resnet10t-ce", {"noise": True}, defaults="digits")
    per_image, per_batch = train_transform_split(recipe)
    assert per_batch is None
    names = [type(t).__name__ for t in per_image.transforms]
    assert names == [type(t).__name__ for t in train_transform(recipe).transforms]
    assert names[-2:] == ["GaussianNoise", "Normalize"]


def test_batch_normalize_by_hand_and_refuses_floats():
    norm = BatchNormalize((0.5, 0.25, 0.0), (0.5, 0.25, 1.0))
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 1, 1)
    # (v / 255 − mean) / std: (0 − .5)/.5 = −1, (.2 − .25)/.25 = −.2, (1 − 0)/1 = 1
    expected = torch.tensor([-1.0, -0.2, 1.0]).view(1, 3, 1, 1).expand(2, 3, 1, 1)
    torch.testing.assert_close(norm(x), expected)
    with pytest.raises(TypeError, match="uint8"):
        norm(torch.zeros(1, 3, 2, 2))


def test_training_ends_with_the_same_weights_either_way(tmp_path, monkeypatch):
    import ee_timm.session as session_module
    import ee_timm.train as train_module
    from ee_data import ImageFolderSource

    root = tmp_path / "digits"
    small_digits(root, train_per_class=3, val_per_class=1, test_images=0)
    source = ImageFolderSource(root)
    recipe = resolve_recipe(
        "resnet10t-ce",
        {"epochs": 2, "workers": 0, "batch_size": 8, "set": {"color_jitter": "0.4,0.4,0.4,0"}},
        defaults="digits",
    )
    train_s, val_s = training_samples(source, recipe)
    weights = []
    for split in (True, False):
        if not split:  # the whole transform per image, as before the cut
            monkeypatch.setattr(
                session_module, "train_transform_split", lambda r: (train_transform(r), None)
            )
        quiet, run_dir = Console(quiet=True), tmp_path / f"run-{split}"
        result = train_module.train(recipe, train_s, val_s, source.classes, run_dir, console=quiet)
        weights.append(torch.load(result.last_path, weights_only=True)["model"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
