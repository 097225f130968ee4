"""Streaming prediction of store splits at test sizes × TTA views.

Each batch is transformed by every view, passed through the model, merged, and appended to the
store at once, so memory stays one batch whatever the split's size. ``predict_sizes`` reads each
split once for all its test sizes (each image decoded once, resized to every size) and writes
every size's prediction from that one pass; the scores are those ``predict_split`` gives at each
size on its own. On CUDA the model runs under autocast (float16) in channels-last layout; views
always run in float32, outside autocast (see ``streaming``).

Under torchrun every rank predicts its own whole chunks of each split's rows into the same
prediction (``group``, see ``ensemble_engine.shards``).

Names: ``predict_sizes`` writes ``<name>-s<size>/<split>``; with ``keep_views`` each view's own
logits also go to ``<name>-s<size>.view-<label>/<split>`` (attr ``view`` names the view, so a
selection can tell them from the merged prediction).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ensemble_engine import (
    AlignmentError,
    ChunkedRows,
    DatasetSource,
    Group,
    RecipeError,
    Sample,
    chunk_rows_for,
    shard_chunk_rows,
    write_sharded,
)

from .cost import SizeCosts
from .evaldata import EvalConfig, SharedBatches, check_test_size, eval_config
from .merge import DEFAULT_MERGE, merge_kind
from .streaming import (
    SplitBatches,
    forward_views,
    open_writers,
    progress_bar,
    view_prediction_name,
    write_batch,
)
from .views import ViewRequest, build_views

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from ensemble_engine import PredictionStore

__all__ = [
    "PredictOptions", "forward_views", "predict_sizes", "predict_split", "view_prediction_name",
]  # fmt: skip


def _check_samples(store: PredictionStore, split: str, samples: Sequence[Sample]) -> None:
    registered = store.split(split)
    ids = [s.sample_id for s in samples]
    if ids != list(registered.sample_ids):
        raise AlignmentError(
            f"the {len(ids)} images given for split {split!r} are not the {registered.n} samples "
            f"the store {store.path} registered for it; predict on the data the store was "
            "initialised from, or re-register the split"
        )


@dataclass(frozen=True)
class PredictOptions:
    """How a split is predicted: ``predict_split``'s keywords beyond what and where.

    ``merge`` (how views combine), ``batch_size``, ``device`` (default: CUDA when there is one),
    ``crop_pct``/``interpolation``/``mean``/``std`` (default: the model's own, see
    ``evaldata.eval_config``), loader ``workers``, the views' random ``seed``, extra ``meta`` for
    the prediction, ``replace`` an existing one, ``keep_views`` (each view's own logits too),
    ``classes`` (the model's class space where it is not the store's), stored ``dtype``,
    ``gflops`` (test size → forward GFLOPs per image and view, counted by the caller; a size
    not given records ``gflops: null``, a cost unknown; see ``cost``).
    """

    merge: str = DEFAULT_MERGE
    batch_size: int = 64
    device: str | torch.device | None = None
    crop_pct: float | None = None
    interpolation: str | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    workers: int = 0
    seed: int = 0
    meta: Mapping[str, Any] | None = None
    replace: bool = False
    keep_views: bool = False
    classes: Sequence[str] | None = None
    dtype: str = "float16"
    gflops: Mapping[int, float] | None = None


def predict_split(
    model: torch.nn.Module,
    samples: Sequence[Sample],
    *,
    store: PredictionStore,
    name: str,
    split: str,
    test_size: int,
    views: Sequence[ViewRequest],
    console: Console | None = None,
    progress: Progress | None = None,
    group: Group | None = None,
    **options: Any,
) -> list[str]:
    """Predict one split at one test size with TTA, streaming into ``store``; returns the ids.

    ``samples`` must be the split's images in the order the store registered them. ``options``
    are ``PredictOptions``' fields (an unknown one is a TypeError). The prediction's metadata is
    ``meta`` plus ``test_size``, ``tta`` (view labels), ``merge``, ``tta_seed``, ``batch_size``,
    ``crop_pct``, ``interpolation`` and ``cost`` (see ``cost``).

    With a ``group`` of several processes (torchrun's ranks, each with its own device), every
    rank calls this with the same arguments and predicts its own whole chunks of rows, chunks
    of whole batches (``ensemble_engine.shards``); the views' random numbers are keyed by the
    split's batch index, so the scores are those of a single process.
    """
    ids = _predict_split_sizes(
        model, samples, {test_size: name}, store=store, split=split, views=views,
        options=PredictOptions(**options), console=console, progress=progress, group=group,
    )  # fmt: skip
    return ids[test_size]


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
    group: Group | None = None,
    **options: Any,
) -> list[str]:
    """Predict every split at every test size as ``<name>-s<size>``; returns all ids written,
    size by size, split by split.

    ``options`` are ``PredictOptions``' fields, as for ``predict_split``. Each split is read
    once for all sizes (an image is decoded once and resized to each), and gives the scores that
    ``predict_split`` gives at each size on its own. Every size is checked before any is
    predicted, so a fixed-size backbone fails before it spends time on the sizes it can take.
    """
    for size in sizes:
        check_test_size(model, size)
    if len(set(sizes)) != len(sizes):
        raise RecipeError(f"test sizes {list(sizes)} repeat a size; list each size once")
    names = {size: f"{name}-s{size}" for size in sizes}
    settings = PredictOptions(**options)
    samples = {split: source.samples(split) for split in splits}
    shared = None
    if group is None or group.size == 1:  # one set of loader workers for every split
        per_image, normalize = _eval_config(model, settings).loader_transforms(sizes)
        shared = SharedBatches(
            list(samples.values()), per_image, batch_size=settings.batch_size,
            workers=settings.workers, device=_device(settings), normalize=normalize,
        )  # fmt: skip
    by_split: dict[str, dict[int, list[str]]] = {}
    try:
        with progress_bar(console) as bars:
            for i, split in enumerate(splits):
                by_split[split] = _predict_split_sizes(
                    model, samples[split], names, store=store, split=split, views=views,
                    options=settings, progress=bars, group=group,
                    loaded=shared.group(i) if shared is not None else None,
                )  # fmt: skip
    finally:
        if shared is not None:
            shared.close()
    return [i for size in sizes for split in splits for i in by_split[split][size]]


def _device(options: PredictOptions) -> torch.device:
    return torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _eval_config(model: torch.nn.Module, o: PredictOptions) -> EvalConfig:
    """The eval settings of ``o`` for ``model``; refuses a batch size below 1 first."""
    if o.batch_size < 1:
        raise RecipeError(f"batch size must be >= 1, got {o.batch_size}")
    return eval_config(
        model, crop_pct=o.crop_pct, interpolation=o.interpolation, mean=o.mean, std=o.std
    )


def _predict_split_sizes(
    model: torch.nn.Module,
    samples: Sequence[Sample],
    names: Mapping[int, str],
    *,
    store: PredictionStore,
    split: str,
    views: Sequence[ViewRequest],
    options: PredictOptions,
    console: Console | None = None,
    progress: Progress | None = None,
    group: Group | None = None,
    loaded: Iterator[list[torch.Tensor]] | None = None,
) -> dict[int, list[str]]:
    """``predict_split`` at every test size of ``names`` (size → prediction name) in one read
    of the split; the ids by size. ``loaded``: the split's batches from a loader shared with
    other splits (not under torchrun), else the split is read here."""
    o = options
    merge, batch_size, seed, dtype, classes = o.merge, o.batch_size, o.seed, o.dtype, o.classes
    kind = merge_kind(merge)
    for size in names:
        check_test_size(model, size)
    sizes = list(names)
    cfg = _eval_config(model, o)
    per_image, normalize = cfg.loader_transforms(sizes)  # uint8, normalised after
    built = build_views(views, mean=cfg.mean, std=cfg.std)
    _check_samples(store, split, samples)
    n_classes = len(classes) if classes is not None else len(store.classes)
    dev = _device(o)

    kept = list(built) if o.keep_views else []
    costs = SizeCosts(model, names, kept, o.gflops, dev, views=len(built))
    facts = {
        size: {
            **dict(o.meta or {}),
            "test_size": size,
            "tta": list(built),
            "tta_seed": seed,
            "batch_size": batch_size,
            "crop_pct": cfg.crop_pct,
            "interpolation": cfg.interpolation,
            "cost": costs.cost(size),
        }
        for size in sizes
    }
    writing: dict[str, Any] = {"classes": classes, "dtype": dtype, "replace": o.replace}
    batches = SplitBatches(
        model, samples, per_image, built, merge=merge, kept=kept,
        names=[names[size] for size in sizes], split=split, batch_size=batch_size, device=dev,
        workers=o.workers, seed=seed, n_classes=n_classes, normalize=normalize,
    )  # fmt: skip
    label = f"{' '.join(names.values())} / {split} [{' '.join(built)}]"
    if len(sizes) == 1:
        label = f"{names[sizes[0]]}/{split} s{sizes[0]} [{' '.join(built)}]"
    opener = partial(open_writers, store, names, split, kind, merge, facts, kept)
    if group is not None and group.size > 1:
        writing["chunk_rows"] = shard_chunk_rows(
            len(samples), chunk_rows_for(n_classes, np.dtype(dtype).itemsize), batch_size,
            group.size,
        )  # fmt: skip

        def fill(writers: Mapping[Any, Any], rows: range) -> None:
            chunked = {key: ChunkedRows(w, w.chunk_rows) for key, w in writers.items()}
            share = f"{label} rank {group.rank} of {group.size}"
            emit = partial(write_batch, chunked, sizes, kept, True)
            batches.run(rows, console, progress, share, emit)
            for rows_out in chunked.values():
                rows_out.flush()

        written = write_sharded(store, group, partial(opener, **writing), fill)
    else:
        writers = opener(**writing)
        with contextlib.ExitStack() as stack:
            for writer in writers.values():
                stack.enter_context(writer)
            emit = partial(write_batch, writers, sizes, kept, False)
            seconds = batches.run(range(len(samples)), console, progress, label, emit, loaded)
            costs.measured(writers, len(samples), seconds)
        written = [writer.id for writer in writers.values()]
    per_size = len(written) // len(sizes)  # the writers come size by size
    return {size: written[i * per_size : (i + 1) * per_size] for i, size in enumerate(sizes)}
