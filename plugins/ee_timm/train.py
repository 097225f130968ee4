"""The training loop: a timm backbone, a loss plugin, the seed's optimiser and schedule.

``train`` takes sample lists and a class list rather than a folder, so any subset of a dataset
trains the same way. Everything lives in a run folder::

    runs/<run-id>/recipe.yaml    the resolved recipe
                  summary.csv    one row per epoch (val_* in percent, as timm writes them)
                  last.pth       everything needed to resume (weights, optimiser, schedule, RNG,
                                 the loss's state under ``loss``: dsb_focal's pools and weights)
                  best.pth       the weights with the best val top-1 so far (and under ``loss``
                                 the loss's state less what only a resume needs)

The schedule is timm's cosine with linear warm-up, stepped once per epoch (as timm's train.py
does by default). On CPU a run is exactly repeatable, whatever the number of data workers, and a
run resumed from ``last.pth`` ends with the same weights as one that was never interrupted.

Under torchrun (``group``) the model trains in DistributedDataParallel, each rank on its share
of every epoch with a batch of ``batch_size`` (global batch: ranks × batch_size, timm's
convention); validation is shared out and summed, and rank 0 alone writes the run folder
(see ``distributed``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from ensemble_engine import RecipeError, Sample

from . import checkpoint as ck
from .builders import resolve_device
from .distributed import TorchGroup
from .loaders import REPLAY_BYTES, ShardedSeededSampler, eval_loader, train_loader
from .progress import TrainProgress, summary_table
from .readings import DivergedError
from .recipe import WEIGHT_NEUTRAL, Recipe
from .saver import CheckpointSaver
from .session import TrainingSession
from .transforms import eval_transform

if TYPE_CHECKING:
    import torch

__all__ = ["DivergedError", "TrainResult", "train"]


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
    targets: torch.Tensor | None = None,
) -> TrainResult:
    """Train ``recipe`` on ``train_samples``, validate on ``val_samples``, write ``run_dir``.

    ``classes`` fixes the output size and the meaning of the labels. ``resume`` continues from
    ``run_dir/last.pth``; without it an existing checkpoint is an error rather than silently
    overwritten. ``on_epoch_end(row)`` sees each summary row after ``last.pth`` is saved.
    The epoch's files are written in the background while the next epoch trains (``saver``);
    ``train`` returns, or raises, only once they are on disk.

    Under torchrun every rank calls ``train`` alike with its ``group`` (whose device it trains
    on); rank 0 alone writes ``run_dir``, and all ranks return once ``best.pth`` is written.

    ``targets``: a distilled run's ``[label | teacher]`` row per training sample (the recipe
    names its ``teacher``; see ``distill``), given to the loss in place of the labels.
    """
    console = console or Console(stderr=True)
    run_dir, last = Path(run_dir), Path(run_dir) / "last.pth"
    writes = group is None or group.rank == 0
    device = resolve_device(recipe.device) if group is None else group.device
    run = TrainingSession(recipe, len(classes), device, group, distilled=targets is not None)
    if last.exists():
        if not resume:
            raise RecipeError(
                f"{run_dir} already holds a run; pass --resume to continue it or remove the folder"
            )
        saved = ck.read_resumable(last)
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
        targets=targets,
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
                        "recipe": recipe.to_dict(), "loss": run.loss_summary()}  # fmt: skip
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
