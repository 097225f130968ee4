"""Streaming prediction of store splits at test sizes × TTA views.

Each batch is transformed by every view, passed through the model, merged, and appended to the
store at once, so memory stays one batch whatever the split's size. On CUDA the model runs under
autocast (float16) in channels-last layout; views always run in float32, outside autocast.

Under torchrun every rank predicts its own whole chunks of each split's rows into the same
prediction (``group``, see ``ensemble_engine.shards``).

Names: ``predict_sizes`` writes ``<name>-s<size>/<split>``; with ``keep_views`` each view's own
logits also go to ``<name>-s<size>.view-<label>/<split>`` (attr ``view`` names the view, so a
selection can tell them from the merged prediction).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ensemble_engine.data import DatasetSource, Sample
from ensemble_engine.errors import AlignmentError, RecipeError
from ensemble_engine.prediction_io import chunk_rows_for
from ensemble_engine.shards import ChunkedRows, Group, shard_chunk_rows, write_sharded
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
    group: Group | None = None,
) -> list[str]:
    """Predict one split at one test size with TTA, streaming into ``store``; returns the ids.

    ``samples`` must be the split's images in the order the store registered them. ``classes``
    is the model's class space where it is not the store's (a class-subset model). The
    prediction's metadata is ``meta`` plus ``test_size``, ``tta`` (view labels), ``merge``,
    ``tta_seed``, ``batch_size``, ``crop_pct`` and ``interpolation``.

    With a ``group`` of several processes (torchrun's ranks, each with its own device), every
    rank calls this with the same arguments and predicts its own whole chunks of rows, chunks
    of whole batches (``ensemble_engine.shards``); the views' random numbers are keyed by the
    split's batch index, so the scores are those of a single process.
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

    facts = {
        **dict(meta or {}),
        "test_size": test_size,
        "tta": list(built),
        "tta_seed": seed,
        "batch_size": batch_size,
        "crop_pct": cfg.crop_pct,
        "interpolation": cfg.interpolation,
    }
    kept = list(built) if keep_views else []
    options: dict[str, Any] = {"classes": classes, "dtype": dtype, "replace": replace}
    batches = _Batches(
        model, samples, cfg.transform(test_size), built, name=name, split=split,
        batch_size=batch_size, device=dev, workers=workers, seed=seed, n_classes=n_classes,
    )  # fmt: skip
    label = f"{name}/{split} s{test_size} [{' '.join(built)}]"
    if group is not None and group.size > 1:
        options["chunk_rows"] = shard_chunk_rows(
            len(samples), chunk_rows_for(n_classes, np.dtype(dtype).itemsize), batch_size,
            group.size,
        )  # fmt: skip

        def fill(writers: Mapping[Any, Any], rows: range) -> None:
            chunked = {key: ChunkedRows(w, w.chunk_rows) for key, w in writers.items()}
            share = f"{label} rank {group.rank} of {group.size}"
            batches.run(rows, console, progress, share, partial(_write, chunked, merge, kept, True))
            for rows_out in chunked.values():
                rows_out.flush()

        opener = partial(_open_writers, store, name, split, kind, merge, facts, kept, **options)
        return write_sharded(store, group, opener, fill)

    writers = _open_writers(store, name, split, kind, merge, facts, kept, **options)
    with contextlib.ExitStack() as stack:
        for writer in writers.values():
            stack.enter_context(writer)
        every = range(len(samples))
        batches.run(every, console, progress, label, partial(_write, writers, merge, kept, False))
    return [writer.id for writer in writers.values()]


@dataclass(frozen=True)
class _Batches:
    """The batches of a split's rows, each through the model under every view."""

    model: torch.nn.Module
    samples: Sequence[Sample]
    transform: Any
    views: Mapping[str, View]
    name: str
    split: str
    batch_size: int
    device: torch.device
    workers: int
    seed: int
    n_classes: int

    def run(
        self,
        rows: range,
        console: Console | None,
        progress: Progress | None,
        label: str,
        emit: Callable[[int, torch.Tensor], None],
    ) -> None:
        """``emit(first row, logits [V, B, K])`` for each batch of ``rows`` (which start on a
        batch: batch ``i`` of the split holds rows ``i * batch_size`` on, whoever predicts it)."""
        if rows.start % self.batch_size:
            raise ValueError(f"rows {rows} do not start on a batch of {self.batch_size}")
        cuda = self.device.type == "cuda"
        self.model.eval().to(self.device)
        if cuda:
            self.model.to(memory_format=torch.channels_last)
        loader = DataLoader(
            SplitImages(self.samples[rows.start : rows.stop], self.transform),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.workers,
            pin_memory=cuda,
        )
        with contextlib.ExitStack() as stack, torch.inference_mode():
            bars = progress if progress is not None else stack.enter_context(progress_bar(console))
            task = None if bars is None else bars.add_task(label, total=len(rows))
            first_batch = rows.start // self.batch_size  # batches counted from the split's start
            for batch_index, images in enumerate(loader, start=first_batch):
                images = images.to(self.device, non_blocking=True)
                outputs = forward_views(
                    self.model, images, self.views, seed=self.seed,
                    keys=(self.split, batch_index), amp=cuda, channels_last=cuda,
                )  # fmt: skip
                if outputs.shape[-1] != self.n_classes:
                    raise RecipeError(
                        f"the model outputs {outputs.shape[-1]} classes but {self.name}/"
                        f"{self.split} has {self.n_classes}; pass the model's class list "
                        "(classes=) or fix num_classes"
                    )
                emit(batch_index * self.batch_size, outputs)
                if bars is not None:
                    bars.advance(task, len(images))


def _write(
    writers: Mapping[Any, Any],
    merge: str,
    kept: Sequence[str],
    at: bool,
    start: int,
    outputs: torch.Tensor,
) -> None:
    """One batch's merged scores (key None) and kept views' own logits, appended or at ``start``."""
    blocks = {None: merge_views(outputs, merge), **dict(zip(kept, outputs, strict=False))}
    for key, block in blocks.items():
        if at:
            writers[key].write_at(start, _numpy(block))
        else:
            writers[key].write(_numpy(block))


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
