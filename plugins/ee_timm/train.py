"""The training loop: a timm backbone, a loss plugin, the seed's optimiser and schedule.

``train`` takes sample lists and a class list rather than a folder, so any subset of a dataset
trains the same way. Everything lives in a run folder::

    runs/<run-id>/recipe.yaml    the resolved recipe
                  summary.csv    one row per epoch (val_* in percent, as timm writes them)
                  last.pth       everything needed to resume (weights, optimiser, schedule, RNG)
                  best.pth       the weights with the best val top-1 so far

The schedule is timm's cosine with linear warm-up, stepped once per epoch (as timm's train.py
does by default). On CPU a run is exactly repeatable, whatever the number of data workers, and a
run resumed from ``last.pth`` ends with the same weights as one that was never interrupted.

Under torchrun (``group``) the model trains in DistributedDataParallel, each rank on its share
of every epoch with a batch of ``batch_size`` (global batch: ranks × batch_size, timm's
convention); validation is shared out and summed, and rank 0 alone writes the run folder
(see ``distributed``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from rich.console import Console
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn

from ensemble_engine.data import Sample
from ensemble_engine.errors import RecipeError
from ensemble_engine.losses import create_loss

from . import checkpoint as ck
from .distributed import TorchGroup, average_batch_norm, wrap_model
from .loaders import REPLAY_BYTES, ShardedSeededSampler, eval_loader, train_loader
from .progress import TrainProgress, summary_table
from .readings import READ_EVERY, DivergedError, LossWatch, evaluate, evaluation_sums, percentages
from .recipe import WEIGHT_NEUTRAL, Recipe
from .saver import CheckpointSaver
from .transforms import batch_mixer, eval_transform, train_transform_split

__all__ = ["DivergedError", "TrainResult", "build_model", "evaluate", "resolve_device", "train"]


@dataclass
class TrainResult:
    """Where a run's files are and how it went."""

    run_dir: Path
    recipe_name: str
    epochs: int
    epochs_done: int
    best_top1: float | None
    best_epoch: int
    device: str
    elapsed_s: float
    img_s: float
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.pth"

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pth"


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


def build_optimizer(recipe: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with classical momentum (timm's ``momentum``; ``nesterov`` picks timm's ``sgd``)."""
    return create_optimizer_v2(
        model,
        opt="sgd" if recipe.nesterov else "momentum",
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        momentum=recipe.momentum,
    )


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


class _Session:
    """The live objects of one run: model, optimiser, schedule, scaler, EMA, loss, RNG."""

    read_every = 1  # steps between readings of the loss: every step on the CPU, where it is free

    def __init__(
        self,
        recipe: Recipe,
        num_classes: int,
        device: torch.device,
        group: TorchGroup | None = None,
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
        self.trained = wrap_model(self.model, group)  # what the training steps run
        self.optimizer = build_optimizer(recipe, self.model)
        self.scheduler = build_scheduler(recipe, self.optimizer)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.cuda and recipe.amp)
        self.ema = ModelEmaV3(self.model, decay=recipe.ema_decay) if recipe.ema else None
        self.loss_fn = create_loss(recipe.loss, **recipe.loss_params).to(device)
        self.mixer = batch_mixer(recipe, num_classes)
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
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])
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
            "recipe": self.recipe.to_dict(),
        }  # fmt: skip

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
                images, targets = self.mixer(images, targets)
            with self.autocast():
                loss = self.loss_fn(self.trained(images), targets)
            watch.add(loss, len(images))  # on the CPU: checked here, before the step
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update(self.model, step=epoch * len(loader) + step + 1)
            n_images += len(images)
            progress.batch(watch.last, lr, n_images / (time.perf_counter() - t0))
        loss_sum, n_images = watch.total()  # every step's loss read and checked
        if self.group is not None:
            loss_sum, n = self.group.sum([loss_sum, n_images])
            n_images = int(n)
        return loss_sum / max(n_images, 1), n_images

    def validate(self, loader: Any) -> tuple[float, float, float]:
        """``evaluate`` on ``loader`` (a rank's share of val under torchrun: summed over ranks)."""
        if self.group is None:
            return evaluate(self.evaluated, loader, self.device, self.autocast)
        average_batch_norm([self.model, self.ema.module if self.ema else None], self.group)
        sums = self.group.sum(evaluation_sums(self.evaluated, loader, self.device, self.autocast))
        return percentages(*sums)


def train(
    recipe: Recipe,
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    classes: Sequence[str],
    run_dir: Path,
    *,
    resume: bool = False,
    console: Console | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    group: TorchGroup | None = None,
) -> TrainResult:
    """Train ``recipe`` on ``train_samples``, validate on ``val_samples``, write ``run_dir``.

    ``classes`` fixes the output size and the meaning of the labels. ``resume`` continues from
    ``run_dir/last.pth``; without it an existing checkpoint is an error rather than silently
    overwritten. ``on_epoch_end(row)`` sees each summary row after ``last.pth`` is saved.
    The epoch's files are written in the background while the next epoch trains (``saver``);
    ``train`` returns, or raises, only once they are on disk.

    Under torchrun every rank calls ``train`` alike with its ``group`` (whose device it trains
    on); rank 0 alone writes ``run_dir``, and all ranks return once ``best.pth`` is written.
    """
    console = console or Console(stderr=True)
    run_dir, last = Path(run_dir), Path(run_dir) / "last.pth"
    writes = group is None or group.rank == 0
    device = resolve_device(recipe.device) if group is None else group.device
    run = _Session(recipe, len(classes), device, group)
    if last.exists():
        if not resume:
            raise RecipeError(
                f"{run_dir} already holds a run; pass --resume to continue it or remove the folder"
            )
        saved = ck.load_checkpoint(last)
        _check_same_recipe(recipe, saved["recipe"], run_dir)
        run.restore(saved)
    else:
        if resume:
            console.print(f"no checkpoint in {run_dir} to resume; starting at epoch 1")
        if writes:
            ck.write_recipe(run_dir / "recipe.yaml", recipe.to_dict())
    shard, val_share = None, val_samples
    if group is not None:
        shard = ShardedSeededSampler(len(train_samples), group.rank, group.size, recipe.seed)
        val_share = list(val_samples)[group.rank :: group.size]  # summed over ranks
    loader = train_loader(
        train_samples, run.per_image, batch_size=recipe.batch_size,
        workers=recipe.workers, generator=run.generator, pin_memory=run.cuda, shard=shard,
    )  # fmt: skip
    val_loader = eval_loader(
        val_share, eval_transform(recipe.img_size, recipe.crop_pct),
        batch_size=recipe.batch_size, workers=recipe.workers, pin_memory=run.cuda,
        replay_bytes=REPLAY_BYTES,  # decoded once, not every epoch, when it fits
    )  # fmt: skip
    started, seen, train_time = time.perf_counter(), 0, 0.0
    state = run.state
    progress = TrainProgress(console, recipe.epochs, len(loader), state["epoch"])
    with CheckpointSaver() as saver, progress:
        for epoch in range(state["epoch"], recipe.epochs):
            progress.start_epoch(epoch + 1)
            if shard is not None:
                shard.set_epoch(epoch)
            lr, t0 = run.optimizer.param_groups[0]["lr"], time.perf_counter()
            train_loss, n_images = run.train_epoch(loader, epoch, progress)
            epoch_time = time.perf_counter() - t0
            seen, train_time = seen + n_images, train_time + epoch_time
            top1, top5, val_loss = run.validate(val_loader)
            run.scheduler.step(epoch + 1)
            row = {
                "epoch": epoch + 1, "train_loss": train_loss, "lr": lr, "val_top1": top1,
                "val_top5": top5, "val_loss": val_loss, "time_s": time.perf_counter() - t0,
                "img_s": n_images / max(epoch_time, 1e-9),
            }  # fmt: skip
            state["epoch"], state["history"] = epoch + 1, [*state["history"], row]
            best = None
            if not val_samples or state["best_top1"] is None or top1 > state["best_top1"]:
                state["best_top1"] = top1 if val_samples else None
                state["best_epoch"] = epoch + 1
                best = {"model": run.evaluated.state_dict(), "epoch": epoch + 1,
                        "val_top1": top1, "classes": list(classes),
                        "recipe": recipe.to_dict()}  # fmt: skip
            if writes:
                saver.submit(_write_epoch, run_dir, best, run.checkpoint(classes))
            progress.end_epoch(row)
            if on_epoch_end is not None:
                saver.wait()  # the callback may read the epoch's files
                on_epoch_end(row)
    result = TrainResult(
        run_dir=run_dir, recipe_name=recipe.name, epochs=recipe.epochs,
        epochs_done=state["epoch"], best_top1=state["best_top1"], best_epoch=state["best_epoch"],
        device=str(device), elapsed_s=time.perf_counter() - started,
        img_s=seen / train_time if train_time else 0.0, history=state["history"],
    )  # fmt: skip
    if group is not None:
        group.barrier()  # best.pth is on disk before any rank goes on to read it
    console.print(summary_table(result))
    return result


def _write_epoch(run_dir: Path, best: dict[str, Any] | None, last: dict[str, Any]) -> None:
    """An epoch's files, in this order: ``best.pth`` (when it improved), ``last.pth``, then
    ``summary.csv`` (rewritten whole from ``last``'s history, so it always matches it)."""
    if best is not None:
        ck.save_checkpoint(best, run_dir / "best.pth")
    ck.save_checkpoint(last, run_dir / "last.pth")
    ck.write_summary(run_dir / "summary.csv", last["history"])


def _check_same_recipe(recipe: Recipe, saved: dict[str, Any], run_dir: Path) -> None:
    current = recipe.to_dict()
    changed = sorted(
        k for k in set(current) | set(saved)
        if k not in WEIGHT_NEUTRAL and current.get(k) != saved.get(k)
    )  # fmt: skip
    if changed:
        raise RecipeError(
            f"{run_dir} was trained with other values of {', '.join(changed)}; resume with the "
            "same recipe, or start a new run (another --run-id)"
        )
