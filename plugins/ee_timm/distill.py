"""Distillation: a run trained on a stored prediction's soft targets plus the labels.

A recipe's ``teacher`` names a stored prediction (usually a fused one, applied to train by a
graph: ``ee combine GRAPH --apply train,val,test``) that must be complete, with scores, on
every split the run trains on, over the run's classes. The loss (Hinton et al. 2015) is::

    (1 - kd_alpha) * task_loss(logits, labels)
        + kd_alpha * T^2 * KL(softmax(teacher / T) || softmax(logits / T)),   T = kd_temperature

with the recipe's own loss as the task loss; ``T^2`` keeps the soft term's gradients at the
scale of the hard one's as T changes. A teacher holding probabilities (a soft vote writes
probs) enters as their logarithm, so ``softmax(log p / T)``; logits enter as they are.

The teacher's row for a training image is found by the image's sample id (the path relative to
its split folder; ``split/path`` on a store with a held-out split), so shuffling and
augmentation do not matter. The loader yields one ``[2C]`` target row per image, ``[one-hot
label | teacher's soft targets at T]``; under mixup/cutmix the whole row goes through timm's
``Mixup`` (dense targets, ``multi_label``), so the teacher's targets are mixed with the same
lambda and the same pairing as the labels. Mixing stays on under a teacher: the recipe's
augmentation means the same with and without one, and the mixed teacher target is the same
approximation timm makes for the labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import Mixup
from torch import nn

from ensemble_engine import (
    DataError,
    DatasetSource,
    HoldoutSource,
    RecipeError,
    Sample,
    StoreOnFirstUse,
)

if TYPE_CHECKING:
    from ensemble_engine import PredictionStore

    from .recipe import Recipe

TRAIN_SPLIT = "train"
PROB_FLOOR = 1e-12  # a prob of 0 has no logarithm: floored before the temperature applies


def kd_loss(logits: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(teacher || softmax(logits / T))``, summed over classes, mean over the batch;
    ``teacher`` holds probabilities already softened at T (rows of ``soft_targets``)."""
    log_student = F.log_softmax(logits.float() / temperature, dim=1)
    kl = F.kl_div(log_student, teacher.float(), reduction="batchmean")
    return kl * temperature**2


def soft_targets(scores: np.ndarray, kind: str, temperature: float) -> np.ndarray:
    """A teacher's scores as probabilities at ``temperature``: ``softmax(z / T)`` of logits
    ``z``, or of ``log p`` for probabilities ``p``."""
    z = np.asarray(scores, dtype=np.float64)
    if kind == "probs":
        z = np.log(np.clip(z, PROB_FLOOR, None))
    z = z / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Distiller:
    """The KD loss of a run: ``(1 - alpha) * task + alpha * kd`` on ``[2C]`` target rows.

    ``mixed``: whether targets went through a mixer (then the task loss takes the soft label
    half, as it takes timm's mixed targets); else it takes the labels as class indices, as a
    run without a teacher does."""

    def __init__(self, num_classes: int, temperature: float, alpha: float, mixed: bool) -> None:
        self.num_classes, self.temperature, self.alpha = num_classes, temperature, alpha
        self.mixed = mixed

    def labels(self, targets: torch.Tensor) -> torch.Tensor:
        """The task loss's targets: the label half (soft), or its class indices when unmixed."""
        half = targets[:, : self.num_classes]
        return half if self.mixed else half.argmax(dim=1)

    def __call__(self, task: nn.Module, logits: torch.Tensor, targets: torch.Tensor) -> Any:
        hard = task(logits, self.labels(targets))
        soft = kd_loss(logits, targets[:, self.num_classes :], self.temperature)
        return (1 - self.alpha) * hard + self.alpha * soft


def kd_mixer(recipe: Recipe, num_classes: int) -> Mixup | None:
    """timm's ``Mixup`` as ``batch_mixer`` builds it, mixing dense ``[2C]`` rows (label
    smoothing is already in the label half, see ``target_rows``); None when mixing is off."""
    if recipe.mixup <= 0 and recipe.cutmix <= 0:
        return None
    return Mixup(
        mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, prob=recipe.mixup_prob,
        switch_prob=recipe.mixup_switch_prob, label_smoothing=0.0,
        num_classes=2 * num_classes, multi_label=True,
    )  # fmt: skip


def _teacher_splits(source: DatasetSource) -> dict[str, str]:
    """split → the prefix its samples' ids carry among the training samples."""
    if isinstance(source, HoldoutSource):
        return {split: f"{split}/" for split in source.record.sources}
    return {TRAIN_SPLIT: ""}


def check_teacher(store: Any, recipe: Recipe, source: DatasetSource, classes: Sequence[str]):
    """The teacher's predictions on the splits the run trains on, each checked: complete, with
    scores, over ``classes``; ``RecipeError``/``DataError`` in one line otherwise."""
    name = recipe.teacher
    if isinstance(store, StoreOnFirstUse):
        raise RecipeError(
            f"teacher {name!r}: store {store.path} does not exist yet, so it holds no teacher; "
            "give the store that holds it (--store)"
        )
    if name not in store.names():
        raise RecipeError(
            f"teacher {name!r} is not a prediction in {store.path}; name one of `ee ls "
            f"{store.path}` (e.g. a fused node applied to train)"
        )
    preds = {}
    needed = ",".join(_teacher_splits(source))  # train; train,val under a store's holdout
    for split in _teacher_splits(source):
        if not store.exists(name, split):
            raise RecipeError(
                f"teacher {name!r} has no complete prediction on split {split!r}, which the run "
                f"trains on; predict it there (`ee combine GRAPH --apply {needed},...` over "
                f"inputs from `ee produce ... --splits {needed},...`)"
            )
        pred = store.get(name, split)
        if pred.kind not in ("logits", "probs"):
            raise RecipeError(
                f"teacher {pred.id} holds {pred.kind}, not scores; distil from logits or probs "
                "(a soft vote, a mean of logits)"
            )
        own = store.classes_of(pred)
        if own != list(classes):
            subset = set(own) < set(classes) or "__other__" in own
            what = "a class subset (a specialist?)" if subset else "another class space"
            raise DataError(
                f"teacher {pred.id} covers {what}: {len(own)} classes, not the run's "
                f"{len(classes)} of {source.root}; distil from a full-class prediction"
            )
        preds[split] = pred
    return preds


def target_rows(
    store: PredictionStore,
    recipe: Recipe,
    source: DatasetSource,
    samples: Sequence[Sample],
    classes: Sequence[str],
) -> torch.Tensor:
    """``[N, 2C]`` float32: per training sample, ``[one-hot label (with the recipe's
    mixup_smoothing) | the teacher's soft targets at kd_temperature]``, looked up by sample id."""
    preds = check_teacher(store, recipe, source, classes)
    rows: dict[str, np.ndarray] = {}
    for split, prefix in _teacher_splits(source).items():
        soft = soft_targets(
            store.read(recipe.teacher, split), preds[split].kind, recipe.kd_temperature
        )
        for sample_id, row in zip(store.split(split).sample_ids, soft, strict=True):
            rows[prefix + str(sample_id)] = row
    missing = [s.sample_id for s in samples if s.sample_id not in rows]
    if missing:
        raise DataError(
            f"teacher {recipe.teacher!r} has no row for training image {missing[0]!r} (and "
            f"{len(missing) - 1} more): predict the teacher on the store's current splits"
        )
    c = len(classes)
    off = recipe.mixup_smoothing / c
    labels = np.full((len(samples), c), off)
    labels[np.arange(len(samples)), [s.label for s in samples]] = 1.0 - recipe.mixup_smoothing + off
    teacher = np.stack([rows[s.sample_id] for s in samples])
    return torch.from_numpy(np.concatenate([labels, teacher], axis=1).astype(np.float32))
