"""Images of a split at a test size, the way timm evaluates: resize, centre crop, normalise.

timm's eval transform resizes the shorter side to ``floor(test_size / crop_pct)`` with the
model's interpolation and centre-crops ``test_size``: ``crop_pct = 1`` keeps the whole image,
the usual 0.875 trims a border. Whatever the caller leaves out comes from the model's
``pretrained_cfg`` (timm's ``resolve_model_data_config``), so a model trained with other
normalisation is evaluated with its own.

``size_batches`` reads a split once for all its test sizes: each image is decoded once and
transformed at every size, in the loader's workers, and each batch comes back as one tensor per
size on the model's device. The workers stop at uint8 images (``EvalConfig.split_transform``),
normalised a whole batch at a time on the device: a quarter of the bytes to pass between
processes and to copy to a GPU, and less work for workers that share the CPU with the model.
Loader workers take parts of a batch (``batch_parts``) rather than whole batches, so that on a
GPU the first batch, which the GPU waits for, is prepared by every worker at once; the parts
are joined on the device into the very tensors a whole-batch loader makes. ``group_batches``
reads several splits through one loader, so one set of workers serves a whole prediction.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from timm.data import create_transform, resolve_model_data_config
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from ensemble_engine import BatchNormalize, RecipeError, Sample, load_image


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

    def split_transform(self, test_size: int) -> tuple[Callable, BatchNormalize | None]:
        """``transform`` cut in two where that changes no value: the per-image part a loader
        runs (PIL image → uint8 tensor) and the normalisation of each whole batch after it.

        timm's eval transform ends in (to tensor, normalise); should it ever end otherwise,
        nothing is cut: ``(transform, None)``.
        """
        full = self.transform(test_size)
        steps = list(getattr(full, "transforms", ()))
        if (
            len(steps) >= 2
            and type(steps[-2]).__name__ in ("ToTensor", "MaybeToTensor")
            and isinstance(steps[-1], T.Normalize)
        ):
            per_image = T.Compose([*steps[:-2], T.PILToTensor()])
            return per_image, BatchNormalize(self.mean, self.std)
        return full, None

    def loader_transforms(
        self, sizes: Sequence[int]
    ) -> tuple[list[Callable], BatchNormalize | None]:
        """``split_transform`` at each of ``sizes``: the per-image parts, and the one batch
        normalisation they share (None, with whole transforms, if any size cannot be cut)."""
        cut = [self.split_transform(size) for size in sizes]
        if any(normalize is None for _, normalize in cut):
            return [self.transform(size) for size in sizes], None
        return [per_image for per_image, _ in cut], cut[0][1]


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


class SizedImages(Dataset):
    """The split's images, each decoded once and transformed by every one of ``transforms``
    (one per test size): an item is a tuple of tensors, one per transform."""

    def __init__(self, samples: Sequence[Sample], transforms: Sequence[Callable]) -> None:
        self.samples = list(samples)
        self.transforms = list(transforms)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        image = load_image(self.samples[index].path)
        return tuple(transform(image) for transform in self.transforms)


def batch_parts(n: int, batch_size: int, parts: int) -> list[list[int]]:
    """Row indices 0..n-1 in batches of ``batch_size``, each cut into up to ``parts`` runs of
    near-equal length (no run crosses a batch), in order.

    >>> batch_parts(10, 4, 2)
    [[0, 1], [2, 3], [4, 5], [6, 7], [8], [9]]
    """
    runs = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        k = min(parts, stop - start)
        bounds = [start + (stop - start) * i // k for i in range(k + 1)]
        runs += [list(range(a, b)) for a, b in zip(bounds, bounds[1:], strict=False)]
    return runs


def size_batches(
    samples: Sequence[Sample],
    transforms: Sequence[Callable],
    *,
    batch_size: int,
    workers: int,
    device: torch.device,
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[list[torch.Tensor]]:
    """``samples`` in batches of ``batch_size``, each as one tensor per transform on ``device``.

    With ``workers`` each batch is loaded in ``workers`` parts (pinned on CUDA, copied without
    blocking, joined on the device); without, in the calling process, whole. ``normalize``
    (for transforms that stop at uint8: ``EvalConfig.split_transform``) runs on each joined
    batch, on the device. The workers are let go without waiting for them to exit
    (``_let_go``).
    """
    stream = group_batches(
        [samples], transforms, batch_size=batch_size, workers=workers, device=device,
        normalize=normalize,
    )  # fmt: skip
    with contextlib.closing(stream):
        for _, batch in stream:
            yield batch


def group_batches(
    groups: Sequence[Sequence[Sample]],
    transforms: Sequence[Callable],
    *,
    batch_size: int,
    workers: int,
    device: torch.device,
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[tuple[int, list[torch.Tensor]]]:
    """``size_batches`` of several sample lists (a prediction's splits) through one loader,
    one after the other: ``(group index, batch)``. No batch mixes two groups, and each group's
    batches are those ``size_batches`` makes of it alone; one set of worker processes serves
    them all, and reads the next group's first images while the model runs the last of one.
    """
    finish = normalize or _as_is
    cuda = device.type == "cuda"
    parts: list[list[int]] = []  # the loader's batches: parts of our batches
    closing: list[tuple[int, bool]] = []  # per part: its group, and whether it ends a batch
    offset = 0
    for index, group in enumerate(groups):
        n = len(group)
        for run in batch_parts(n, batch_size, workers if workers > 0 else 1):
            parts.append([offset + i for i in run])
            closing.append((index, (run[-1] + 1) % batch_size == 0 or run[-1] + 1 == n))
        offset += n
    if not parts:
        return
    loader = DataLoader(
        SizedImages([sample for group in groups for sample in group], transforms),
        batch_sampler=parts,
        num_workers=workers,
        pin_memory=cuda,
        prefetch_factor=4 if workers > 0 else None,  # up to 4 batches ahead of the model
    )
    pending: list[list[torch.Tensor]] = []
    loading = [iter(loader)]
    try:
        for index, ends_batch in closing:  # one part each: one more would end the loader here
            part = next(loading[0])
            pending.append([images.to(device, non_blocking=True) for images in part])
            if ends_batch:
                yield index, [finish(_join(tensors)) for tensors in zip(*pending, strict=True)]
                pending = []
    finally:
        _let_go(loading)


class SharedBatches:
    """``group_batches`` handed out group by group: ``group(i)`` yields group ``i``'s batches.

    The groups are read in order, each to its end, as a prediction goes split by split;
    ``close`` lets the loader go (also when a group was left unfinished).
    """

    def __init__(self, groups: Sequence[Sequence[Sample]], transforms: Sequence[Callable],
                 **options: Any) -> None:  # fmt: skip
        self.counts = [-(-len(group) // options["batch_size"]) for group in groups]
        self._stream = group_batches(groups, transforms, **options)

    def group(self, index: int) -> Iterator[list[torch.Tensor]]:
        for _ in range(self.counts[index]):
            got, batch = next(self._stream)
            if got != index:
                raise RuntimeError(f"group {index} asked for while group {got} is being read")
            yield batch

    def close(self) -> None:
        self._stream.close()


def _let_go(holder: list[Any]) -> None:
    """Drop the only reference to a loader's iterator (in ``holder``) in a short-lived thread.

    The iterator's finaliser joins its worker processes, one after the other; forked from a
    process that holds a CUDA context, each takes a while to exit, and nothing here needs to
    wait for that. A worker still exiting when the interpreter ends is ended by
    ``multiprocessing`` as any daemonic child is.
    """
    threading.Thread(target=holder.clear, name="ee-loader-exit", daemon=True).start()


def _as_is(images: torch.Tensor) -> torch.Tensor:
    return images


def _join(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)
