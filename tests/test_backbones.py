"""Every seed backbone alias builds untrained and takes one training step on CPU.

Each runs at the smallest input it accepts (``min_input_size``: 32 pixels, 75 for
inception_resnet_v2) with a batch of two, through the same model, optimiser and loss builders
as a real run. The biggest models are marked slow; they still run in CI.
"""

from __future__ import annotations

import pytest
import torch
from ee_timm.backbones import BACKBONE_ALIASES, min_input_size
from ee_timm.builders import build_model, build_optimizer
from ee_timm.recipe import resolve_recipe

from ensemble_engine.losses import create_loss

# Above ~45M parameters or ~0.5 s per step on a 2-core CPU.
HEAVY = {"resnest101", "resnest200", "tresnetxl", "seresnet101", "seresnet152", "seresnext101",
         "regnetx120", "inceptionresnetv2"}  # fmt: skip


def _params(aliases):
    return [pytest.param(a, marks=pytest.mark.slow) if a in HEAVY else a for a in sorted(aliases)]


@pytest.mark.parametrize("alias", _params(BACKBONE_ALIASES))
def test_backbone_trains_one_step(alias):
    recipe = resolve_recipe(f"{alias}-ce", {"batch_size": 2}, defaults="digits")
    size = recipe.img_size
    assert size == (min_input_size(recipe.backbone) or 32)
    torch.manual_seed(0)
    model = build_model(recipe, num_classes=10)
    optimizer = build_optimizer(recipe, model)
    loss_fn = create_loss(recipe.loss)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 10)
    loss = loss_fn(logits, torch.tensor([3, 7]))
    assert torch.isfinite(loss)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    # The step reaches the stem and the classifier. (Not every weight: timm zero-initialises
    # the last norm of each residual branch, so a branch's other weights get no gradient yet.)
    stem = next(iter(before))
    head = next(n for n, p in model.named_parameters() if p is model.get_classifier().weight)
    assert {stem, head} <= changed


def test_smaller_inputs_fail_where_a_minimum_is_recorded():
    recipe = resolve_recipe("inceptionresnetv2-ce", defaults="digits")
    model = build_model(recipe, num_classes=10).eval()
    low = min_input_size(recipe.backbone)
    with torch.no_grad():
        model(torch.randn(1, 3, low, low))
        with pytest.raises(RuntimeError):
            model(torch.randn(1, 3, low - 1, low - 1))
