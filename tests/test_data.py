"""The ee_data plugin: the digits tree, image folders, hold-out splits, registration."""

from __future__ import annotations

import csv
import json
import random
import shutil
import warnings
from collections import Counter
from pathlib import Path

import ee_data
import numpy as np
import pytest
from ee_data import (
    ImageFolderSource,
    SkippedFilesWarning,
    default_digits_root,
    holdout_split,
    load_image,
    merge_train_val,
    open_dataset,
    write_digits,
)
from PIL import Image
from sklearn.datasets import load_digits

from ensemble_engine.data import UNKNOWN_LABEL, DatasetSource, Sample
from ensemble_engine.errors import DataError
from ensemble_engine.plugins import PluginHost

DIGITS = load_digits()
TARGET = DIGITS.target
CLASS_TOTALS = np.bincount(TARGET)  # 178, 182, 177, ... per digit


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits") / "tree"
    write_digits(root)
    return root


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def index_of(name: str) -> int:
    """The load_digits row of a file named digit_NNNNN.png."""
    return int(Path(name).stem.removeprefix("digit_"))


def read_labels_csv(path: Path) -> dict[str, str]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image", "label"]
    return dict(rows[1:])


def make_tree(root: Path, counts: dict[str, int]) -> Path:
    """Tiny grey PNGs: ``{"train/a": 2}`` writes train/a/img_0.png and train/a/img_1.png."""
    for folder, n in counts.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("L", (4, 4), color=10 * i).save(root / folder / f"img_{i}.png")
    return root


# --- write_digits -----------------------------------------------------------------------------


def test_digits_tree_splits_every_image_once_by_its_class(digits_root: Path) -> None:
    files = files_under(digits_root)
    images = [f for f in files if f.endswith(".png")]
    assert len(images) == len(TARGET) == 1797
    assert sorted(index_of(f) for f in images) == list(range(len(TARGET)))
    per_split_class: Counter[tuple[str, int]] = Counter()
    for f in images:
        split, folder, _ = f.split("/")
        if split in ("train", "val"):
            assert int(folder) == TARGET[index_of(f)]
        per_split_class[split, int(TARGET[index_of(f)])] += 1
    for c in range(10):
        assert per_split_class["train", c] == 50
        assert per_split_class["val", c] == 50
        assert per_split_class["test", c] == CLASS_TOTALS[c] - 100
    assert sum(per_split_class["test", c] for c in range(10)) == 1797 - 1000
    manifest = json.loads((digits_root / "ee-digits.json").read_text())
    assert manifest["counts"] == {"train": 500, "val": 500, "test": 797}


def test_digits_labels_csv_names_the_class_of_every_test_image(digits_root: Path) -> None:
    labels = read_labels_csv(digits_root / "test" / "labels.csv")
    assert sorted(labels) == sorted(p.name for p in (digits_root / "test" / "imgs").iterdir())
    for name, label in labels.items():
        assert label == str(TARGET[index_of(name)])


def test_digits_images_are_rgb_upscaled_grey_levels(digits_root: Path) -> None:
    val = sorted((digits_root / "val").rglob("*.png"))
    test = sorted((digits_root / "test" / "imgs").glob("*.png"))
    for path in val[::25] + test[::100]:
        with Image.open(path) as image:
            assert image.mode == "RGB" and image.size == (32, 32)
            pixels = np.asarray(image)
        # Grey 0..16 to 0..255 rounded (16 -> 255, 8 -> 127.5 -> 128), each pixel a 4×4 block.
        grey = [[round(v * 255 / 16) for v in row] for row in DIGITS.images[index_of(path.name)]]
        block = np.repeat(np.repeat(np.array(grey, dtype=np.uint8), 4, axis=0), 4, axis=1)
        assert np.array_equal(pixels, np.stack([block] * 3, axis=-1))


def test_digits_same_seed_same_bytes_other_seed_other_split(
    digits_root: Path, tmp_path: Path
) -> None:
    again = tmp_path / "again"
    write_digits(again, seed=0)
    assert files_under(again) == files_under(digits_root)
    for name in files_under(digits_root):
        assert (again / name).read_bytes() == (digits_root / name).read_bytes()
    other = tmp_path / "other"
    write_digits(other, seed=1)
    train = [f for f in files_under(digits_root) if f.startswith("train/")]
    other_train = [f for f in files_under(other) if f.startswith("train/")]
    assert len(other_train) == len(train) and other_train != train


def test_digits_rerun_with_same_params_is_a_no_op(digits_root: Path) -> None:
    manifest = digits_root / "ee-digits.json"
    before = manifest.stat().st_mtime_ns, files_under(digits_root)
    summary = write_digits(digits_root)
    assert summary["written"] is False
    assert summary["counts"] == {"train": 500, "val": 500, "test": 797}
    assert (manifest.stat().st_mtime_ns, files_under(digits_root)) == before


def test_digits_other_params_refuse_then_force_rewrites(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    write_digits(root, train_per_class=5, val_per_class=5, size=8)
    first = files_under(root)
    with pytest.raises(DataError, match="--force"):
        write_digits(root, train_per_class=5, val_per_class=5, size=8, seed=3)
    assert files_under(root) == first
    summary = write_digits(root, train_per_class=5, val_per_class=5, size=8, seed=3, force=True)
    assert summary["written"] is True and summary["params"]["seed"] == 3
    assert json.loads((root / "ee-digits.json").read_text())["params"]["seed"] == 3
    assert files_under(root) != first
    assert [p.name for p in tmp_path.iterdir()] == ["tree"]  # no temporary folders left


def test_digits_refuse_more_per_class_than_the_smallest_class(tmp_path: Path) -> None:
    smallest = int(np.argmin(CLASS_TOTALS))
    need = int(CLASS_TOTALS[smallest]) + 1
    with pytest.raises(DataError, match=rf"class {smallest} has only .*lower them"):
        write_digits(tmp_path / "tree", train_per_class=need - 50, val_per_class=50)
    assert not (tmp_path / "tree").exists()


def test_digits_refuse_a_foreign_folder_even_with_force(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="holds no digits tree"):
        write_digits(tmp_path, force=True)
    assert files_under(tmp_path) == ["notes.txt"]


def test_digits_write_into_an_existing_empty_folder(tmp_path: Path) -> None:
    summary = write_digits(tmp_path, train_per_class=3, val_per_class=2, size=8)
    assert summary["counts"] == {"train": 30, "val": 20, "test": 1797 - 50}


# --- ImageFolderSource ------------------------------------------------------------------------


def test_image_folder_reads_the_digits_tree(digits_root: Path) -> None:
    source = ImageFolderSource(digits_root)
    assert isinstance(source, DatasetSource)
    assert source.classes == [str(c) for c in range(10)]
    assert source.split_names() == ["train", "val", "test"]
    train = source.samples("train")
    assert [s.sample_id for s in train] == sorted(
        f.removeprefix("train/") for f in files_under(digits_root) if f.startswith("train/")
    )
    for sample in train:
        folder, name = sample.sample_id.split("/")
        assert sample.label == int(folder) == TARGET[index_of(name)]
        assert sample.path == digits_root / "train" / sample.sample_id
    test = source.samples("test")
    assert len(test) == 797
    for sample in test:
        assert "/" not in sample.sample_id
        assert sample.path == digits_root / "test" / "imgs" / sample.sample_id
        assert sample.label == TARGET[index_of(sample.sample_id)]
    assert source.skipped == []


def test_image_folder_without_labels_csv_leaves_test_unknown(tmp_path: Path) -> None:
    make_tree(tmp_path, {"train/a": 1, "train/b": 1, "test/imgs": 3})
    source = ImageFolderSource(tmp_path)
    assert [s.sample_id for s in source.samples("test")] == ["img_0.png", "img_1.png", "img_2.png"]
    assert {s.label for s in source.samples("test")} == {UNKNOWN_LABEL}
    assert not source.is_labelled("test")


def test_image_folder_labels_csv_with_an_unknown_class_is_an_error(tmp_path: Path) -> None:
    make_tree(tmp_path, {"train/a": 1, "train/b": 1, "test/imgs": 2})
    (tmp_path / "test" / "labels.csv").write_text("image,label\nimg_0.png,b\nimg_1.png,zebra\n")
    with pytest.raises(DataError, match="zebra"):
        ImageFolderSource(tmp_path).samples("test")


def test_image_folder_skips_unreadable_files_with_one_warning(tmp_path: Path) -> None:
    make_tree(tmp_path, {"train/a": 2, "train/b": 2, "val/a": 1})
    corrupt = tmp_path / "train" / "a" / "corrupt.png"
    corrupt.write_bytes(b"\x00not an image at all" * 10)
    notes = tmp_path / "train" / "b" / "notes.txt"
    notes.write_text("hello")
    source = ImageFolderSource(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = source.samples("train")
    assert len(caught) == 1 and caught[0].category is SkippedFilesWarning
    assert "a/corrupt.png" in str(caught[0].message) and "b/notes.txt" in str(caught[0].message)
    assert source.skipped == [corrupt, notes]
    assert [s.sample_id for s in samples] == [
        "a/img_0.png",
        "a/img_1.png",
        "b/img_0.png",
        "b/img_1.png",
    ]
    with pytest.raises(DataError, match="corrupt.png"):
        ImageFolderSource(tmp_path, strict=True).samples("train")


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ({}, "holds no folders"),
        ({"train": 0}, "no class folders"),
        ({"train/a": 0, "train/b": 0}, "holds no readable images"),
        ({"train/a": 1, "train/b": 0}, "folder.s. b in .* hold no readable images"),
        ({"train/a": 3}, "at least two"),
        ({"a": 3}, "at least two"),
        ({"train/a": 1, "train/b": 1, "val/a": 1, "val/zebra": 1}, "zebra"),
        ({"train/a": 1, "train/b": 1, "val/a": 0}, "holds no readable images"),
    ],
)
def test_image_folder_refuses_broken_trees(
    tmp_path: Path, counts: dict[str, int], message: str
) -> None:
    make_tree(tmp_path, counts)
    with pytest.raises(DataError, match=message):
        source = ImageFolderSource(tmp_path)
        for split in source.split_names():
            source.samples(split)


def test_image_folder_plain_layout_is_one_train_split(tmp_path: Path) -> None:
    make_tree(tmp_path, {"cat": 2, "dog/puppies": 1})
    source = ImageFolderSource(tmp_path)
    assert source.split_names() == ["train"] and source.classes == ["cat", "dog"]
    assert [(s.sample_id, s.label) for s in source.samples("train")] == [
        ("cat/img_0.png", 0),
        ("cat/img_1.png", 0),
        ("dog/puppies/img_0.png", 1),
    ]
    with pytest.raises(DataError, match="known splits: train"):
        source.samples("val")


def test_image_folder_orders_extra_splits_after_the_standard_ones(tmp_path: Path) -> None:
    counts = {f"{split}/{c}": 1 for split in ["zeta", "test", "extra", "train"] for c in "ab"}
    make_tree(tmp_path, counts)
    assert ImageFolderSource(tmp_path).split_names() == ["train", "test", "extra", "zeta"]


def test_load_image_gives_rgb_and_names_unreadable_files(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a": 2})
    image = load_image(tmp_path / "a" / "img_1.png")
    assert image.mode == "RGB" and np.asarray(image)[0, 0].tolist() == [10, 10, 10]
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="bad.png"):
        load_image(tmp_path / "bad.png")


# --- hold-out -----------------------------------------------------------------------------------


def labelled(sizes: dict[int, int]) -> list[Sample]:
    return [
        Sample(f"{label}/{i:03d}.png", Path(f"{label}/{i:03d}.png"), label)
        for label, n in sizes.items()
        for i in range(n)
    ]


def test_holdout_counts_per_class() -> None:
    samples = labelled({0: 3, 1: 7, 2: 10, 3: 2, 4: 20})
    kept, held = holdout_split(samples, 0.3, seed=0)
    # round(n * 0.3): 3 -> 0.9 -> 1, 7 -> 2.1 -> 2, 10 -> 3, 2 -> 0.6 -> 1, 20 -> 6
    assert Counter(s.label for s in held) == {0: 1, 1: 2, 2: 3, 3: 1, 4: 6}
    # held-out counts are clamped to [1, n - 1]: 2 * 0.9 = 1.8 -> 1 and 20 * 0.01 = 0.2 -> 1
    _, held = holdout_split(labelled({0: 2, 1: 20}), 0.9, seed=0)
    assert Counter(s.label for s in held)[0] == 1
    _, held = holdout_split(labelled({0: 2, 1: 20}), 0.01, seed=0)
    assert Counter(s.label for s in held) == {0: 1, 1: 1}


def test_holdout_is_a_deterministic_partition() -> None:
    samples = labelled({0: 30, 1: 25, 2: 40})
    kept, held = holdout_split(samples, 0.2, seed=7)
    assert {s.sample_id for s in kept}.isdisjoint(s.sample_id for s in held)
    assert sorted(kept + held, key=lambda s: s.sample_id) == sorted(
        samples, key=lambda s: s.sample_id
    )
    assert [s for s in samples if s in held] == held  # input order kept
    assert holdout_split(samples, 0.2, seed=7) == (kept, held)
    shuffled = samples[:]
    random.Random(0).shuffle(shuffled)
    assert set(holdout_split(shuffled, 0.2, seed=7)[1]) == set(held)
    assert set(holdout_split(samples, 0.2, seed=8)[1]) != set(held)


@pytest.mark.parametrize(
    ("samples", "fraction", "message"),
    [
        (labelled({0: 5, 1: 5}), 0.0, "between 0 and 1"),
        (labelled({0: 5, 1: 5}), 1.0, "between 0 and 1"),
        (labelled({0: 5, 1: 1}), 0.5, r"class\(es\) \[1\]"),
        (labelled({0: 5, UNKNOWN_LABEL: 2}), 0.5, "unlabelled"),
        (labelled({0: 5}) * 2, 0.5, "unique"),
    ],
)
def test_holdout_refuses(samples: list[Sample], fraction: float, message: str) -> None:
    with pytest.raises(DataError, match=message):
        holdout_split(samples, fraction, seed=0)


def test_merge_train_val_holds_out_a_fresh_stratified_val(digits_root: Path) -> None:
    source = ImageFolderSource(digits_root)
    merged = merge_train_val(source, 0.2, seed=0)
    expected = {f"train/{s.sample_id}": s for s in source.samples("train")} | {
        f"val/{s.sample_id}": s for s in source.samples("val")
    }
    got = merged["train"] + merged["val"]
    assert sorted(s.sample_id for s in got) == sorted(expected)
    for sample in got:
        assert (sample.path, sample.label) == (
            expected[sample.sample_id].path,
            expected[sample.sample_id].label,
        )
    # 100 per class merged, 20 of each held out
    assert Counter(s.label for s in merged["val"]) == {c: 20 for c in range(10)}
    assert merge_train_val(source, 0.2, seed=0) == merged


# --- registration and the digits cache --------------------------------------------------------


def test_plugin_registers_imagefolder_and_digits(tmp_path: Path) -> None:
    host = PluginHost()
    host.add(ee_data, "ee_data", builtin=True)
    assert {"imagefolder", "digits"} <= {e.name for e in host.datasets}
    source = host.datasets.get("digits").factory(
        tmp_path / "d", train_per_class=2, val_per_class=1, size=8
    )
    assert [len(source.samples(s)) for s in source.split_names()] == [20, 10, 1797 - 30]
    again = host.datasets.get("imagefolder").factory(tmp_path / "d")
    assert again.samples("val") == source.samples("val")


def test_open_dataset_without_root_uses_the_digits_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EE_CACHE_DIR", str(tmp_path))
    root = default_digits_root()
    assert root.parent == tmp_path and root.name.startswith("digits-")
    assert default_digits_root(seed=1) != root
    source = open_dataset()
    assert source.root == root and (root / "ee-digits.json").is_file()
    assert len(source.samples("test")) == 797
    assert open_dataset(root).samples("train") == source.samples("train")
    shutil.rmtree(root)
