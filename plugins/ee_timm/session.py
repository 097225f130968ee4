"""The live objects of one training run and its two passes: a training epoch, a validation.

``TrainingSession`` holds the model (wrapped for DistributedDataParallel under torchrun), the
optimiser, schedule, gradient scaler, EMA, loss, batch mixer and the sampler's generator, and
saves and restores all of them (``checkpoint``/``restore``) so that a resumed run repeats an
uninterrupted one.

A loss registered with ``needs_features`` (``dsb_focal``) gets, every step, the pre-logit
features of that step's own forward pass (``WithFeatures``: no second forward) with the step's
labels, the argmax of mixup/cutmix targets (the class that fills most of the image), after the
step's loss is taken; under torchrun the features of every rank (``TorchGroup.gather_rows``).
At each epoch's end it refreshes its weights, so a checkpoint's weights are those of its pools.
The loss's state is saved under ``loss`` (``last.pth`` whole; ``best.pth`` without the parts
only a resume needs, the loss's ``RESUME_ONLY``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import torch
from timm.utils import ModelEmaV3
from torch import nn

from ensemble_engine import RecipeError, create_loss, get_registry

from . import checkpoint as ck
from .builders import (
    WithFeatures,
    build_model,
    build_optimizer,
    build_scheduler,
    load_optimizer_state,
)
from .distill import Distiller, kd_mixer
from .distributed import TorchGroup, average_batch_norm, wrap_model
from .progress import TrainProgress
from .readings import READ_EVERY, LossWatch, evaluate, evaluation_sums, percentages
from .recipe import Recipe
from .transforms import batch_mixer, train_transform_split


class TrainingSession:
    """The live objects of one run: model, optimiser, schedule, scaler, EMA, loss, RNG."""

    read_every = 1  # steps between readings of the loss: every step on the CPU, where it is free

    def __init__(
        self,
        recipe: Recipe,
        num_classes: int,
        device: torch.device,
        group: TorchGroup | None = None,
        *,
        distilled: bool = False,
    ) -> None:
        self.recipe, self.device, self.group = recipe, device, group
        self.cuda = device.type == "cuda"
        self.channels_last = self.cuda and recipe.channels_last
        if self.cuda:
            self.read_every = READ_EVERY
        ck.seed_everything(recipe.seed)
        self.model = build_model(recipe, num_classes).to(device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss_fn = create_loss(recipe.loss, **recipe.loss_params).to(device)
        self.feeds_features = loss_needs_features(recipe.loss, self.loss_fn)
        forward = WithFeatures(self.model) if self.feeds_features else self.model
        self.trained = wrap_model(forward, group)  # what the training steps run
        self.optimizer = build_optimizer(recipe, self.model)
        self.scheduler = build_scheduler(recipe, self.optimizer)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.cuda and recipe.amp)
        self.ema = ModelEmaV3(self.model, decay=recipe.ema_decay) if recipe.ema else None
        self.mixer = batch_mixer(recipe, num_classes)
        self.distiller = None  # targets are [label | teacher] rows: see ``distill``
        if distilled:
            self.mixer = kd_mixer(recipe, num_classes)
            self.distiller = Distiller(
                num_classes, recipe.kd_temperature, recipe.kd_alpha, self.mixer is not None
            )
        self.per_image, self.per_batch = train_transform_split(recipe)
        self.generator = torch.Generator().manual_seed(recipe.seed)
        self.state: dict[str, Any] = {"epoch": 0, "history": [], "best_top1": None, "best_epoch": 0}

    @property
    def evaluated(self) -> nn.Module:
        """The weights that are validated and kept as best: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.cuda and self.recipe.amp:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def restore(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        load_optimizer_state(self.optimizer, saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])
        if saved.get("loss") is not None:
            self.loss_fn.load_state_dict(saved["loss"])
        self.state = {k: saved[k] for k in self.state}
        self.scheduler.step(self.state["epoch"])
        ck.restore_rng(saved["rng"], self.generator)

    def checkpoint(self, classes: Sequence[str]) -> dict[str, Any]:
        return {
            **self.state, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": ck.capture_rng(self.generator), "classes": list(classes),
            "recipe": self.recipe.to_dict(), "loss": self.loss_fn.state_dict(),
        }  # fmt: skip

    def loss_summary(self) -> dict[str, Any]:
        """The loss's state without what only a resume needs (its ``RESUME_ONLY`` keys)."""
        skip = getattr(self.loss_fn, "RESUME_ONLY", ())
        return {k: v for k, v in self.loss_fn.state_dict().items() if k not in skip}

    def train_epoch(self, loader: Any, epoch: int, progress: TrainProgress) -> tuple[float, int]:
        """One pass over ``loader``; returns (mean training loss, images seen), over all ranks.

        On CUDA the loss is read (and checked for divergence) at the first step, every
        ``read_every`` steps and at the end, not at every step: a per-step read would stall the
        launch queue. The epoch's files are written only after that last reading.
        """
        self.trained.train()
        lr = self.optimizer.param_groups[0]["lr"]
        watch = LossWatch(epoch, every=self.read_every)
        t0, n_images = time.perf_counter(), 0
        for step, (images, targets) in enumerate(loader):
            images = images.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            if self.per_batch is not None:  # uint8 from the loader: normalised here, at once
                images = self.per_batch(images)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            if self.mixer is not None:
                if len(images) % 2:  # timm mixes pairs; only a run with less than one batch
                    images, targets = images[:-1], targets[:-1]  # gets an odd one (drop_last)
                images, targets = self.mixer(images, targets)
            with self.autocast():
                outputs = self.trained(images)
                logits, features = outputs if self.feeds_features else (outputs, None)
                if self.distiller is None:
                    loss = self.loss_fn(logits, targets)
                else:
                    loss = self.distiller(self.loss_fn, logits, targets)
            watch.add(loss, len(images))  # on the CPU: checked here, before the step
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update(self.model, step=epoch * len(loader) + step + 1)
            if features is not None:
                self.feed_features(features, targets)
            n_images += len(images)
            progress.batch(watch.last, lr, n_images / (time.perf_counter() - t0))
        refresh = getattr(self.loss_fn, "refresh_weights", None)
        if self.feeds_features and refresh is not None:
            refresh()  # the checkpoint's weights are those of its pools
        loss_sum, n_images = watch.total()  # every step's loss read and checked
        if self.group is not None:
            loss_sum, n = self.group.sum([loss_sum, n_images])
            n_images = int(n)
        return loss_sum / max(n_images, 1), n_images

    def feed_features(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        """The step's pre-logit features and labels (argmax of soft targets) to the loss; under
        torchrun every rank's, in rank order, so that every rank's pools stay the same."""
        if self.distiller is not None:
            targets = self.distiller.labels(targets)
        labels = targets.argmax(dim=1) if targets.ndim == 2 else targets
        features = features.detach()
        if self.group is not None:
            features, labels = self.group.gather_rows(features, labels, self.recipe.batch_size)
        self.loss_fn.update_features(features, labels)

    def validate(self, loader: Any) -> tuple[float, float, float]:
        """``evaluate`` on ``loader`` (a rank's share of val under torchrun: summed over ranks)."""
        if self.group is None:
            return evaluate(self.evaluated, loader, self.device, self.autocast)
        average_batch_norm([self.model, self.ema.module if self.ema else None], self.group)
        sums = self.group.sum(evaluation_sums(self.evaluated, loader, self.device, self.autocast))
        return percentages(*sums)


def loss_needs_features(name: str, loss: nn.Module) -> bool:
    """Whether loss ``name`` is registered with ``needs_features`` (and can take them)."""
    entry = get_registry("losses").get(name)
    if not entry.capabilities.get("needs_features", False):
        return False
    if not callable(getattr(loss, "update_features", None)):
        raise RecipeError(
            f"loss {name!r} is registered with needs_features but has no update_features"
            "(features, labels) method; fix the plugin that registers it"
        )
    return True
