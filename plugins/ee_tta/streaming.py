"""One split through a model: its batches at each test size under every TTA view, and the
store writers they stream into.

``SplitBatches.run`` reads the split once for all its test sizes (``evaldata.size_batches``),
so each image is decoded once; for every batch it runs each size's images through every view
and the model (``forward_views``), merges the views on the device and hands the scores on as
host arrays. ``open_writers`` opens, for each size, the merged prediction's writer and one per
kept view; ``write_batch`` writes one batch's blocks. On CUDA the model runs under autocast
(float16) in channels-last layout; views always run in float32, outside autocast.

On CUDA the scores come to the host without a wait: their copy into pinned memory is queued
behind the batch's kernels, and they are handed on only once the next batch and size has been
queued, by which time the copy is done. Reading them at once would stall the host at every
batch until the GPU caught up, and leave the GPU idle while the host writes and queues again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ensemble_engine import RecipeError, Sample, check_name

from .cost import view_cost
from .evaldata import size_batches
from .merge import merge_views
from .views import View, view_generator

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from ensemble_engine import PredictionStore

WriterKey = tuple[int, str | None]  # (test size, kept view's label; None: the merged scores)
Emit = Callable[[int, int, np.ndarray], None]  # (first row, size index, blocks [1 + kept, B, K])


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


@dataclass(frozen=True)
class SplitBatches:
    """The batches of a split's rows at each test size, each through the model under every
    view, the views merged (and the ``kept`` ones' own logits alongside)."""

    model: torch.nn.Module
    samples: Sequence[Sample]
    transforms: Sequence[Any]  # one per test size
    views: Mapping[str, View]
    merge: str
    kept: Sequence[str]
    names: Sequence[str]  # one per test size
    split: str
    batch_size: int
    device: torch.device
    workers: int
    seed: int
    n_classes: int
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None  # for uint8 transforms

    def run(
        self,
        rows: range,
        console: Console | None,
        progress: Progress | None,
        label: str,
        emit: Emit,
        loaded: Iterator[list[torch.Tensor]] | None = None,
    ) -> list[float]:
        """``emit(first row, size index, blocks)`` for each batch of ``rows`` at each size, in
        order; ``blocks`` [1 + kept, B, K] float32 are the merged scores, then each kept view's
        logits; returns the seconds the forward passes (every view, merged) took at each size:
        wall time on the CPU, CUDA events' time on a GPU (measured without a wait). ``rows``
        start on a batch: batch ``i`` of the split holds rows
        ``i * batch_size`` on, whoever predicts it. ``loaded`` gives the batches of ``rows``
        from a loader shared with other splits (``evaldata.SharedBatches``); by default the
        rows are read here."""
        if rows.start % self.batch_size:
            raise ValueError(f"rows {rows} do not start on a batch of {self.batch_size}")
        cuda = self.device.type == "cuda"
        self.model.eval().to(self.device)
        if cuda:
            self.model.to(memory_format=torch.channels_last)
        if loaded is None:
            loaded = size_batches(
                self.samples[rows.start : rows.stop], self.transforms, batch_size=self.batch_size,
                workers=self.workers, device=self.device, normalize=self.normalize,
            )  # fmt: skip
        on_host = _HostBlocks(emit, lag=1 if cuda else 0)
        view_index = {label: i for i, label in enumerate(self.views)}
        clock = _ForwardClock(len(self.transforms), cuda)
        with contextlib.ExitStack() as stack, torch.inference_mode():
            bars = progress if progress is not None else stack.enter_context(progress_bar(console))
            task = None if bars is None else bars.add_task(label, total=len(rows))
            first_batch = rows.start // self.batch_size  # batches counted from the split's start
            for batch_index, per_size in enumerate(loaded, start=first_batch):
                for size_index, images in enumerate(per_size):
                    started = clock.start()
                    outputs = forward_views(
                        self.model, images, self.views, seed=self.seed,
                        keys=(self.split, batch_index), amp=cuda, channels_last=cuda,
                    )  # fmt: skip
                    if outputs.shape[-1] != self.n_classes:
                        raise RecipeError(
                            f"the model outputs {outputs.shape[-1]} classes but "
                            f"{self.names[size_index]}/{self.split} has {self.n_classes}; pass "
                            "the model's class list (classes=) or fix num_classes"
                        )
                    kept = [outputs[view_index[label]] for label in self.kept]
                    blocks = torch.stack([merge_views(outputs, self.merge), *kept])
                    clock.stop(size_index, started)
                    on_host.add(batch_index * self.batch_size, size_index, blocks)
                if bars is not None:
                    bars.advance(task, len(per_size[0]))
            on_host.flush()
        return clock.seconds()


class _ForwardClock:
    """Seconds spent in forward passes, by test size: ``perf_counter`` on the CPU (whose work
    is done when the call returns), a pair of CUDA events per batch on a GPU, read at the end."""

    def __init__(self, sizes: int, cuda: bool) -> None:
        self.cuda = cuda
        self.wall = [0.0] * sizes
        self.events: list[tuple[int, Any, Any]] = []

    def start(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def stop(self, size_index: int, started: Any) -> None:
        if not self.cuda:
            self.wall[size_index] += time.perf_counter() - started
            return
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        self.events.append((size_index, started, event))

    def seconds(self) -> list[float]:
        out = list(self.wall)
        for size_index, started, ended in self.events:
            ended.synchronize()
            out[size_index] += started.elapsed_time(ended) / 1000.0
        return out


class _HostBlocks:
    """Device blocks copied to the host and handed to ``emit`` in order, ``lag`` items late.

    A CUDA block is copied into pinned memory without blocking and an event marks the copy;
    it is handed on once ``lag`` later blocks have been queued, after waiting on its event
    (long passed by then). A CPU block is handed on as it is.
    """

    def __init__(self, emit: Emit, lag: int) -> None:
        self.emit, self.lag = emit, lag
        self.queued: list[tuple[int, int, torch.Tensor, torch.cuda.Event | None]] = []

    def add(self, start: int, size_index: int, blocks: torch.Tensor) -> None:
        event = None
        if blocks.device.type == "cuda":
            host = torch.empty(blocks.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(blocks, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            blocks = host
        self.queued.append((start, size_index, blocks, event))
        self._hand_on(self.lag)

    def flush(self) -> None:
        self._hand_on(0)

    def _hand_on(self, keep: int) -> None:
        while len(self.queued) > keep:
            start, size_index, blocks, event = self.queued.pop(0)
            if event is not None:
                event.synchronize()
            self.emit(start, size_index, blocks.to(torch.float32).numpy())


def write_batch(
    writers: Mapping[Any, Any],
    sizes: Sequence[int],
    kept: Sequence[str],
    at: bool,
    start: int,
    size_index: int,
    blocks: np.ndarray,
) -> None:
    """One batch's merged scores (key (size, None)) and kept views' own logits (key (size,
    label)), ``blocks`` in that order, appended or written at ``start``."""
    size = sizes[size_index]
    for key, block in zip([None, *kept], blocks, strict=True):
        if at:
            writers[size, key].write_at(start, block)
        else:
            writers[size, key].write(block)


def open_writers(
    store: PredictionStore,
    names: Mapping[int, str],
    split: str,
    kind: str,
    merge: str,
    facts: Mapping[int, dict[str, Any]],
    kept: Sequence[str],
    **options: Any,
) -> dict[WriterKey, Any]:
    """For each size (key ``(size, None)``) the merged prediction's writer and one per kept view
    (key ``(size, label)``), size by size.

    All are created, and so checked against existing predictions, before any image is read;
    where one cannot be, the locks the others took are given back.
    """
    writers: dict[WriterKey, Any] = {}
    try:
        for size, name in names.items():
            writers[size, None] = store.prediction_writer(
                name, split, kind=kind, meta={**facts[size], "merge": merge}, **options
            )
            for label in kept:
                view_name = view_prediction_name(name, label)
                meta = {**facts[size], "tta": [label], "view": label}
                if "cost" in meta:
                    meta["cost"] = view_cost(meta["cost"], view_name, len(facts[size]["tta"]))
                writers[size, label] = store.prediction_writer(
                    view_name, split, kind="logits", meta=meta, **options
                )
    except BaseException:
        for writer in writers.values():
            if writer.lock is not None:
                writer.lock.release()
        raise
    return writers
