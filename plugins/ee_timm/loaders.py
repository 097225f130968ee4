"""Data loaders over sample lists whose augmentations repeat exactly, whatever the workers.

Training takes ``Sample`` lists rather than a folder, so any subset (a hold-out, a resampled
class subset) trains the same way. The sampler draws, from one ``torch.Generator``, the epoch's
order and a seed for every sample; the dataset seeds torch's, numpy's and Python's generators
from that seed around each image's transform (restoring them afterwards). An image's
augmentation thus depends only on the sampler's generator: not on which worker process loads
it, how many workers there are, or whether they persist between epochs. That generator's state
is checkpointed, which is what lets a resumed run repeat an uninterrupted one.

Under torchrun each rank loads its own share of every epoch (``ShardedSeededSampler``, torch's
``DistributedSampler``); there a sample's seed comes from (recipe seed, epoch, sample), so its
augmentation is the same whichever rank loads it and however many ranks there are.

Validation repeats one deterministic transform every epoch, so its batches are kept after the
first pass when they fit in ``REPLAY_BYTES`` (``ReplayBatches``): later passes run the model only,
with no decoding and no loader processes competing with it for the CPU.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, get_worker_info

from ensemble_engine import Sample

SEED_BOUND = 2**32  # numpy's seeds are 32-bit
REPLAY_BYTES = 512 * 2**20  # validation batches kept in memory up to this size


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch (CPU), numpy and Python's ``random`` for the block.

    In the main process (``workers=0``) their states are restored afterwards, so loading never
    moves the training loop's generators; a worker process has no one else to disturb and
    skips the (comparatively slow) save and restore.
    """
    saved = None
    if get_worker_info() is None:
        saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
    torch.default_generator.manual_seed(seed)  # torch.manual_seed would also visit CUDA
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        if saved is not None:
            torch.set_rng_state(saved[0])
            np.random.set_state(saved[1])
            random.setstate(saved[2])


class SeededSampler(Sampler):
    """Yields ``(index, seed)``: a shuffled (or in-order) pass with one seed per sample."""

    def __init__(self, n: int, generator: torch.Generator, shuffle: bool = True) -> None:
        self.n, self.generator, self.shuffle = n, generator, shuffle

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=self.generator).tolist()
        else:
            order = list(range(self.n))
        seeds = torch.randint(0, SEED_BOUND, (self.n,), generator=self.generator).tolist()
        return iter(zip(order, seeds, strict=True))

    def __len__(self) -> int:
        return self.n


class ShardedSeededSampler(DistributedSampler):
    """One rank's share of each epoch (torch's ``DistributedSampler``: shuffled by seed and
    epoch, padded to equal shares), as ``(index, seed)`` pairs; call ``set_epoch`` each epoch.

    The seeds are one per sample of the whole dataset, drawn by numpy's ``SeedSequence`` from
    (seed, epoch): which rank loads a sample does not change its augmentation.
    """

    def __init__(self, n: int, rank: int, ranks: int, seed: int) -> None:
        super().__init__(range(n), num_replicas=ranks, rank=rank, shuffle=True, seed=seed)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        seeds = np.random.SeedSequence([self.seed, self.epoch]).generate_state(len(self.dataset))
        return iter([(i, int(seeds[i])) for i in super().__iter__()])


class SampleDataset(Dataset):
    """``(transform(image), label)`` per sample; keys are indices or ``(index, seed)`` pairs.

    ``targets``: one row per sample given in place of its label (a distilled run's ``[label |
    teacher]`` rows, see ``distill``)."""

    def __init__(
        self, samples: Sequence[Sample], transform: Callable, targets: torch.Tensor | None = None
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.targets = targets

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        from ensemble_engine import load_image

        index, seed = key if isinstance(key, tuple) else (key, None)
        sample = self.samples[index]
        image = load_image(sample.path)
        label = sample.label if self.targets is None else self.targets[index]
        if seed is None:
            return self.transform(image), label
        with seeded(seed):
            return self.transform(image), label


def train_loader(
    samples: Sequence[Sample],
    transform: Callable,
    *,
    batch_size: int,
    workers: int,
    generator: torch.Generator,
    pin_memory: bool = False,
    shard: ShardedSeededSampler | None = None,
    targets: torch.Tensor | None = None,
) -> DataLoader:
    """Shuffled, seeded batches; the last partial batch is dropped (batch norm needs > 1).

    ``shard`` (under torchrun) replaces the sampler drawn from ``generator`` by a rank's share;
    ``targets`` (one row per sample) replace the labels (see ``SampleDataset``).
    """
    sampler = shard if shard is not None else SeededSampler(len(samples), generator)
    return DataLoader(
        SampleDataset(samples, transform, targets),
        batch_size=batch_size,
        sampler=sampler,
        drop_last=len(sampler) > batch_size,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        # Worker seeds no longer matter (each sample brings its own); a fixed generator keeps
        # the loader from drawing on torch's global one.
        generator=torch.Generator().manual_seed(0),
    )


def eval_loader(
    samples: Sequence[Sample],
    transform: Callable,
    *,
    batch_size: int,
    workers: int,
    pin_memory: bool = False,
    replay_bytes: int = 0,
) -> DataLoader | ReplayBatches:
    """Batches in sample order; evaluation draws on no global random generator.

    ``replay_bytes`` > 0 keeps the first pass's batches up to that size (``ReplayBatches``), for
    a split evaluated again and again.
    """
    loader = DataLoader(
        SampleDataset(samples, transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    return ReplayBatches(loader, replay_bytes) if replay_bytes > 0 else loader


class ReplayBatches:
    """Iterates ``loader``'s batches; the first complete pass is kept and replayed after it.

    For loaders whose every pass yields the same tensors (evaluation: fixed order, deterministic
    transform). Keeping stops, and the batches already kept are dropped, once they pass
    ``max_bytes``: then every pass reads ``loader`` as before. A pass left unfinished keeps
    nothing. Once the batches are kept, the loader (and its worker processes) is released.
    """

    def __init__(self, loader: DataLoader, max_bytes: int = REPLAY_BYTES) -> None:
        self.loader: DataLoader | None = loader
        self.max_bytes = max_bytes
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.too_big = max_bytes <= 0
        self._length = len(loader)

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.batches is not None:
            yield from self.batches
            return
        assert self.loader is not None
        kept: list[tuple[torch.Tensor, torch.Tensor]] | None = None if self.too_big else []
        size = 0
        for images, targets in self.loader:
            if kept is not None:
                size += images.nbytes + targets.nbytes
                if size > self.max_bytes:
                    kept, self.too_big = None, True
                else:
                    kept.append((images, targets))
            yield images, targets
        if kept is not None:
            self.batches, self.loader = kept, None
