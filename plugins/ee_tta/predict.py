"""Streaming prediction of store splits at test sizes × TTA views.

Each batch is transformed by every view, passed through the model, merged, and appended to the
store at once, so memory stays one batch whatever the split's size. On CUDA the model runs under
autocast (float16) in channels-last layout; views always run in float32, outside autocast.

Names: ``predict_sizes`` writes ``<name>-s<size>/<split>``; with ``keep_views`` each view's own
logits also go to ``<name>-s<size>.view-<label>/<split>`` (attr ``view`` names the view, so a
selection can tell them from the merged prediction).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ensemble_engine.data import DatasetSource, Sample
from ensemble_engine.errors import AlignmentError, RecipeError
from ensemble_engine.store import check_name

from .evaldata import SplitImages, check_test_size, eval_config
from .merge import DEFAULT_MERGE, merge_kind, merge_views
from .views import View, ViewRequest, build_views, view_generator

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from ensemble_engine.store import PredictionStore


def forward_views(
    model: torch.nn.Module,
    images: torch.Tensor,
    views: Mapping[str, View],
    *,
    seed: int = 0,
    keys: Sequence[object] = (),
    amp: bool = False,
    channels_last: bool = False,
) -> torch.Tensor:
    """Logits [V, B, K] (float32) of ``model`` on each view of a batch of normalised images.

    View ``label`` draws from ``view_generator(seed, *keys, label)`` on the images' device; the
    predictor passes ``keys=(split, batch_index)``. Views run in float32; only the model runs
    under autocast when ``amp``.
    """
    outputs = []
    for label, view in views.items():
        x = view(images, view_generator(seed, *keys, label, device=images.device))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(images.device.type, enabled=amp):
            outputs.append(model(x).float())
    return torch.stack(outputs)


def view_prediction_name(name: str, label: str) -> str:
    """The name of one view's own prediction next to the merged ``name``."""
    return check_name(f"{name}.view-{label}", "prediction name")


@contextlib.contextmanager
def progress_bar(console: Console | None) -> Iterator[Progress | None]:
    """A rich progress display on ``console``; None (nothing shown) without a console."""
    if console is None:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        yield progress


def _check_samples(store: PredictionStore, split: str, samples: Sequence[Sample]) -> None:
    registered = store.split(split)
    ids = [s.sample_id for s in samples]
    if ids != list(registered.sample_ids):
        raise AlignmentError(
            f"the {len(ids)} images given for split {split!r} are not the {registered.n} samples "
            f"the store {store.path} registered for it; predict on the data the store was "
            "initialised from, or re-register the split"
        )


def predict_split(
    model: torch.nn.Module,
    samples: Sequence[Sample],
    *,
    store: PredictionStore,
    name: str,
    split: str,
    test_size: int,
    views: Sequence[ViewRequest],
    merge: str = DEFAULT_MERGE,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    workers: int = 0,
    seed: int = 0,
    meta: Mapping[str, Any] | None = None,
    replace: bool = False,
    keep_views: bool = False,
    classes: Sequence[str] | None = None,
    dtype: str = "float16",
    console: Console | None = None,
    progress: Progress | None = None,
) -> list[str]:
    """Predict one split at one test size with TTA, streaming into ``store``; returns the ids.

    ``samples`` must be the split's images in the order the store registered them. ``classes``
    is the model's class space where it is not the store's (a class-subset model). The
    prediction's metadata is ``meta`` plus ``test_size``, ``tta`` (view labels), ``merge``,
    ``tta_seed``, ``batch_size``, ``crop_pct`` and ``interpolation``.
    """
    kind = merge_kind(merge)
    check_test_size(model, test_size)
    if batch_size < 1:
        raise RecipeError(f"batch size must be >= 1, got {batch_size}")
    cfg = eval_config(model, crop_pct=crop_pct, interpolation=interpolation, mean=mean, std=std)
    built = build_views(views, mean=cfg.mean, std=cfg.std)
    _check_samples(store, split, samples)
    n_classes = len(classes) if classes is not None else len(store.classes)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = dev.type == "cuda"

    facts = {
        **dict(meta or {}),
        "test_size": test_size,
        "tta": list(built),
        "tta_seed": seed,
        "batch_size": batch_size,
        "crop_pct": cfg.crop_pct,
        "interpolation": cfg.interpolation,
    }
    writers = _open_writers(
        store,
        name,
        split,
        kind,
        merge,
        facts,
        list(built) if keep_views else [],
        classes=classes,
        dtype=dtype,
        replace=replace,
    )

    model.eval().to(dev)
    if cuda:
        model.to(memory_format=torch.channels_last)
    loader = DataLoader(
        SplitImages(samples, cfg.transform(test_size)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=cuda,
    )
    with contextlib.ExitStack() as stack, torch.inference_mode():
        for writer in writers.values():
            stack.enter_context(writer)
        bars = progress if progress is not None else stack.enter_context(progress_bar(console))
        task = (
            None
            if bars is None
            else bars.add_task(
                f"{name}/{split} s{test_size} [{' '.join(built)}]", total=len(samples)
            )
        )
        for batch_index, images in enumerate(loader):
            images = images.to(dev, non_blocking=True)
            outputs = forward_views(
                model,
                images,
                built,
                seed=seed,
                keys=(split, batch_index),
                amp=cuda,
                channels_last=cuda,
            )
            if outputs.shape[-1] != n_classes:
                raise RecipeError(
                    f"the model outputs {outputs.shape[-1]} classes but {name}/{split} has "
                    f"{n_classes}; pass the model's class list (classes=) or fix num_classes"
                )
            writers[None].write(_numpy(merge_views(outputs, merge)))
            for index, label in enumerate(built if keep_views else ()):
                writers[label].write(_numpy(outputs[index]))
            if bars is not None:
                bars.advance(task, len(images))
    return [writer.id for writer in writers.values()]


def _open_writers(
    store: PredictionStore,
    name: str,
    split: str,
    kind: str,
    merge: str,
    facts: dict[str, Any],
    kept: Sequence[str],
    **options: Any,
) -> dict[str | None, Any]:
    """The merged prediction's writer (key None) and one per kept view (key: its label).

    All are created, and so checked against existing predictions, before any image is read.
    """
    writers = {
        None: store.prediction_writer(
            name, split, kind=kind, meta={**facts, "merge": merge}, **options
        )
    }
    for label in kept:
        writers[label] = store.prediction_writer(
            view_prediction_name(name, label),
            split,
            kind="logits",
            meta={**facts, "tta": [label], "view": label},
            **options,
        )
    return writers


def _numpy(scores: torch.Tensor) -> np.ndarray:
    return scores.detach().to("cpu", torch.float32).numpy()


def predict_sizes(
    model: torch.nn.Module,
    source: DatasetSource,
    splits: Sequence[str],
    sizes: Sequence[int],
    views: Sequence[ViewRequest],
    *,
    store: PredictionStore,
    name: str,
    console: Console | None = None,
    **options: Any,
) -> list[str]:
    """Predict every split at every test size as ``<name>-s<size>``; returns all ids written.

    ``options`` are ``predict_split``'s keywords. Every size is checked before any is predicted,
    so a fixed-size backbone fails before it spends time on the sizes it can take.
    """
    for size in sizes:
        check_test_size(model, size)
    ids: list[str] = []
    with progress_bar(console) as bars:
        for size in sizes:
            for split in splits:
                ids += predict_split(
                    model,
                    source.samples(split),
                    store=store,
                    name=f"{name}-s{size}",
                    split=split,
                    test_size=size,
                    views=views,
                    progress=bars,
                    **options,
                )
    return ids
