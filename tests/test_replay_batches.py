"""Validation batches kept after the first pass (``ReplayBatches``) and what training sees."""

from __future__ import annotations

import pytest
import torch
from ee_timm.loaders import ReplayBatches, eval_loader
from ee_timm.producer import training_samples
from ee_timm.recipe import resolve_recipe
from ee_timm.train import train
from helpers import small_digits
from rich.console import Console
from torch.utils.data import DataLoader, Dataset


class Counted(Dataset):
    """``n`` items ``(arange-based image, label)``; counts every item built."""

    def __init__(self, n: int) -> None:
        self.n, self.built = n, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self.built += 1
        return torch.full((3, 4, 4), float(i)), i % 3


def batches_of(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def same(a, b) -> bool:
    if len(a) != len(b):
        return False
    pairs = zip(a, b, strict=True)
    return all(torch.equal(x0, x1) and torch.equal(y0, y1) for (x0, y0), (x1, y1) in pairs)


def test_first_pass_is_kept_and_replayed():
    data = Counted(10)
    replay = ReplayBatches(DataLoader(data, batch_size=4), max_bytes=1 << 20)
    assert len(replay) == 3
    first = batches_of(replay)
    assert data.built == 10 and replay.loader is None  # loader (and its workers) released
    for _ in range(3):
        assert same(batches_of(replay), first)
    assert data.built == 10  # nothing decoded again
    # the batches are what the plain loader gives: item i is full of i, labels i % 3
    assert [x[:, 0, 0, 0].tolist() for x, _ in first] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [y.tolist() for _, y in first] == [[0, 1, 2, 0], [1, 2, 0, 1], [2, 0]]


def test_over_the_budget_every_pass_reads_the_loader():
    data = Counted(10)
    per_item = 3 * 4 * 4 * 4 + 8  # float32 image + int64 label
    replay = ReplayBatches(DataLoader(data, batch_size=4), max_bytes=9 * per_item)
    first = batches_of(replay)
    assert replay.batches is None and replay.too_big
    assert same(batches_of(replay), first) and data.built == 20
    exact = ReplayBatches(DataLoader(Counted(10), batch_size=4), max_bytes=10 * per_item)
    batches_of(exact)
    assert exact.batches is not None  # the budget is inclusive


def test_an_unfinished_pass_keeps_nothing():
    data = Counted(10)
    replay = ReplayBatches(DataLoader(data, batch_size=4), max_bytes=1 << 20)
    for _ in replay:
        break
    assert replay.batches is None and replay.loader is not None
    first = batches_of(replay)
    assert replay.batches is not None and same(batches_of(replay), first)


def test_eval_loader_replays_only_when_asked(tmp_path):
    from ee_data import ImageFolderSource
    from ee_timm.transforms import eval_transform

    root = tmp_path / "digits"
    small_digits(root, train_per_class=1, val_per_class=2, test_images=0)
    samples = ImageFolderSource(root).samples("val")
    kwargs = {"batch_size": 6, "workers": 0}
    plain = eval_loader(samples, eval_transform(32, 0.875), **kwargs)
    kept = eval_loader(samples, eval_transform(32, 0.875), replay_bytes=1 << 24, **kwargs)
    assert isinstance(plain, DataLoader) and isinstance(kept, ReplayBatches)
    expected = batches_of(plain)
    assert same(batches_of(kept), expected) and same(batches_of(kept), expected)
    assert kept.loader is None


def test_training_is_the_same_with_and_without_replay(tmp_path, monkeypatch):
    """Every epoch's validation numbers and the final weights are bit-identical."""
    import ee_timm.loaders as loaders
    import ee_timm.train as train_module
    from ee_data import ImageFolderSource

    root = tmp_path / "digits"
    small_digits(root, train_per_class=3, val_per_class=2, test_images=0)
    source = ImageFolderSource(root)
    recipe = resolve_recipe(
        "resnet10t-ce", {"epochs": 3, "workers": 0, "batch_size": 8}, defaults="digits"
    )
    train_s, val_s = training_samples(source, recipe)
    decoded = []
    original = loaders.SampleDataset.__getitem__

    def counting(self, key):
        decoded.append(key)
        return original(self, key)

    monkeypatch.setattr(loaders.SampleDataset, "__getitem__", counting)
    results = {}
    for budget in (train_module.REPLAY_BYTES, 0):
        monkeypatch.setattr(train_module, "REPLAY_BYTES", budget)
        decoded.clear()
        results[budget] = train(recipe, train_s, val_s, source.classes, tmp_path / f"r{budget}",
                                console=Console(quiet=True))  # fmt: skip
        val_reads = sum(1 for key in decoded if isinstance(key, int))  # eval keys are indices
        assert val_reads == len(val_s) * (1 if budget else 3)
    kept, plain = results[train_module.REPLAY_BYTES], results[0]
    columns = ("train_loss", "val_top1", "val_top5", "val_loss")
    assert [[r[c] for c in columns] for r in kept.history] == [
        [r[c] for c in columns] for r in plain.history
    ]
    a = torch.load(kept.last_path, weights_only=True)["model"]
    b = torch.load(plain.last_path, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("budget", [0, -1])
def test_no_budget_means_no_replay(budget):
    data = Counted(5)
    replay = ReplayBatches(DataLoader(data, batch_size=2), max_bytes=budget)
    batches_of(replay)
    batches_of(replay)
    assert replay.batches is None and data.built == 10
