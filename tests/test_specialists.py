"""Specialists: weak classes from a stored prediction, class-subset resampling, cov-* runs."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from ee_data import write_digits
from ee_data.imagefolder import ImageFolderSource
from ee_timm.recipe import resolve_recipe
from ee_timm.specialist import (
    map_to_subset,
    specialist_classes,
    specialist_training_samples,
)

from ensemble_engine.combiner import OTHER
from ensemble_engine.errors import DataError, RecipeError
from ensemble_engine.store import open_store

CLASSES = [str(c) for c in range(10)]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> ImageFolderSource:
    """6 train and 3 val images per class, no test split (a specialist predicts val only)."""
    root = tmp_path_factory.mktemp("spec") / "digits"
    write_digits(root, train_per_class=6, val_per_class=3, size=16)
    for path in (root / "test" / "imgs").iterdir():
        path.unlink()
    (root / "test" / "imgs").rmdir()
    (root / "test" / "labels.csv").unlink()
    (root / "test").rmdir()
    return ImageFolderSource(root)


def original_class(sample) -> str:
    return sample.sample_id.split("/")[0]  # ids are <class folder>/<file>


# --- resampling -------------------------------------------------------------------------------


def test_resampling_counts_are_exact(digits):
    train = digits.samples("train")
    out = specialist_training_samples(
        train, ["8", "3"], CLASSES, per_class=20, other_per_class=4, seed=0
    )
    # 2 listed classes × 20 + 8 other classes × 4 = 72
    assert len(out) == 2 * 20 + 8 * 4 == 72
    per_class = Counter(original_class(s) for s in out)
    assert per_class == {"8": 20, "3": 20, **{c: 4 for c in CLASSES if c not in ("3", "8")}}
    # Listed classes take their position in the list, every other class the __other__ index.
    for sample in out:
        expected = {"8": 0, "3": 1}.get(original_class(sample), 2)
        assert sample.label == expected
    # With replacement: 20 draws from 6 images must repeat some.
    eights = [s.sample_id for s in out if original_class(s) == "8"]
    assert len(set(eights)) <= 6
    # Others are drawn without replacement where a class has enough images.
    twos = [s.sample_id for s in out if original_class(s) == "2"]
    assert len(set(twos)) == 4
    assert {s.sample_id for s in out} <= {s.sample_id for s in train}


def test_resampling_is_seeded_and_order_free(digits):
    train = digits.samples("train")

    def draw(samples, seed):
        out = specialist_training_samples(samples, ["3"], CLASSES, per_class=9,
                                          other_per_class=2, seed=seed)  # fmt: skip
        return [(s.sample_id, s.label) for s in out]

    assert draw(train, 0) == draw(list(reversed(train)), 0)
    assert draw(train, 0) != draw(train, 1)
    # More images asked of another class than it has: drawn with replacement.
    out = specialist_training_samples(train, ["3"], CLASSES, per_class=1, other_per_class=10,
                                      seed=0)  # fmt: skip
    assert Counter(original_class(s) for s in out)["5"] == 10


def test_validation_maps_every_image(digits):
    val = digits.samples("val")
    mapped = map_to_subset(val, ["3", "8"], CLASSES)
    assert [s.sample_id for s in mapped] == [s.sample_id for s in val]
    for before, after in zip(val, mapped, strict=True):
        assert after.label == {3: 0, 8: 1}.get(before.label, 2)
    assert specialist_classes(["3", "8"]) == ["3", "8", OTHER]


def test_bad_subsets_are_refused(digits):
    train = digits.samples("train")
    with pytest.raises(DataError, match="'?11'? are not classes|11 are not classes"):
        specialist_training_samples(train, ["11"], CLASSES, per_class=2, other_per_class=1,
                                    seed=0)  # fmt: skip
    with pytest.raises(DataError, match="nothing is left"):
        specialist_training_samples(train, CLASSES, CLASSES, per_class=2, other_per_class=1,
                                    seed=0)  # fmt: skip
    with pytest.raises(RecipeError, match="twice"):
        resolve_recipe("resnet10t-ce", {"subset": ["3", "3"]}, defaults="digits")
    with pytest.raises(RecipeError, match="must not list __other__"):
        resolve_recipe("resnet10t-ce", {"subset": ["3", OTHER]}, defaults="digits")
    with pytest.raises(RecipeError, match="need a subset"):
        resolve_recipe("resnet10t-ce", {"subset_per_class": 50}, defaults="digits")


def test_specialist_run_ids_and_recipes_differ():
    plain = resolve_recipe("resnet10t-ce", defaults="digits")
    special = resolve_recipe("resnet10t-ce", {"subset": ["3", "8"]}, defaults="digits")
    assert special.run_id().startswith("cov-resnet10t-ce-s0-")
    assert special.training_hash() != plain.training_hash()
    assert "subset" not in plain.to_dict()  # plain recipes (and their run ids) are unchanged
    assert special.to_dict()["subset"] == ["3", "8"]
    assert special.to_dict()["subset_per_class"] == 500


# --- weak classes -----------------------------------------------------------------------------


@pytest.fixture
def labelled_store(tmp_path, digits):
    store = open_store(tmp_path / "s.zarr", "w")
    store.set_classes(digits.classes)
    val = digits.samples("val")
    store.add_split("val", [s.sample_id for s in val], [s.label for s in val])
    return store, np.array([s.label for s in val])


def test_weak_classes_of_a_labels_prediction(labelled_store, run_cli, tmp_path):
    store, y = labelled_store
    predicted = y.copy()
    predicted[y == 3] = 0  # class 3: 0 of 3 right
    predicted[np.flatnonzero(y == 5)[0]] = 6  # class 5: 2 of 3 right
    store.write_prediction("voted", "val", kind="labels", labels=predicted)
    out = tmp_path / "weak.txt"
    result = run_cli("weak-classes", store.path, "voted", "--threshold", "0.7", "-o", out)
    assert result.exit_code == 0, result.output
    assert out.read_text() == "3\n5\n"
    assert "0.000" in result.stdout and "0.667" in result.stdout
    result = run_cli("weak-classes", store.path, "voted/val", "--threshold", "0.5", "--json")
    data = json.loads(result.stdout)
    assert data["weak"] == ["3"]
    by_class = {row["class"]: row for row in data["classes"]}
    assert by_class["5"] == {"class": "5", "n": 3, "accuracy": pytest.approx(2 / 3)}
    assert by_class["0"]["accuracy"] == 1.0
    result = run_cli("weak-classes", store.path, "voted", "--threshold", "0.5")
    assert result.stdout == "3\n"  # ids on stdout, the table on stderr


def test_weak_classes_of_scores_match_a_loop(labelled_store, run_cli):
    store, y = labelled_store
    scores = np.random.default_rng(0).normal(size=(len(y), 10)).astype(np.float32)
    scores[np.arange(len(y)), y] += 1.5  # mostly right, some classes worse than others
    store.write_prediction("net-s32", "val", kind="logits", scores=scores)
    result = run_cli("weak-classes", store.path, "net-s32", "--threshold", "0.9", "--json")
    assert result.exit_code == 0, result.output
    got = {row["class"]: row["accuracy"] for row in json.loads(result.stdout)["classes"]}
    for c in range(10):
        rows = [i for i in range(len(y)) if y[i] == c]
        right = sum(1 for i in rows if int(np.argmax(scores[i].astype(np.float16))) == c)
        assert got[str(c)] == pytest.approx(right / len(rows))
    weak = [str(c) for c in range(10) if got[str(c)] < 0.9]
    assert json.loads(result.stdout)["weak"] == sorted(weak, key=lambda c: (got[c], c))
    missing = run_cli("weak-classes", store.path, "net-s32", "--split", "test")
    assert missing.exit_code == 2 and "net-s32/test" in missing.stderr


# --- a specialist run -------------------------------------------------------------------------


@pytest.mark.slow
def test_specialist_run_writes_subset_predictions(digits, run_cli, tmp_path):
    subset_file = tmp_path / "weak.txt"
    subset_file.write_text("8\n# the confusable pair\n3\n")
    store_path, runs = tmp_path / "s.zarr", tmp_path / "runs"
    options = ["--data", digits.root, "--store", store_path, "--runs-dir", runs,
               "--set", "defaults=digits", "--img-size", "16", "--epochs", "1",
               "--batch-size", "16", "--workers", "0", "--test-sizes", "16"]  # fmt: skip
    bad = run_cli("produce", "test_resnet-ce", *options, "--other-per-class", "2")
    assert bad.exit_code == 2 and "need --subset" in bad.stderr
    result = run_cli("produce", "test_resnet-ce", *options, "--subset", subset_file,
                     "--subset-per-class", "8", "--other-per-class", "2")  # fmt: skip
    assert result.exit_code == 0, result.output
    (run,) = runs.iterdir()
    plain = resolve_recipe("test_resnet-ce", {"img_size": 16, "epochs": 1, "batch_size": 16},
                           defaults="digits")  # fmt: skip
    assert run.name.startswith("cov-test_resnet-ce-s0-") and run.name != plain.run_id()
    store = open_store(store_path, "r")
    assert [p.id for p in store.list()] == ["cov-test_resnet-ce-s16/val"]
    pred = store.get("cov-test_resnet-ce-s16", "val")
    assert pred.attrs["classes"] == ["8", "3", OTHER] and pred.shape == (30, 3)
    assert pred.attrs["subset"] == {"classes": ["8", "3"], "other": OTHER, "per_class": 8,
                                    "other_per_class": 2}  # fmt: skip
    # 2 × 8 + 8 × 2 = 32 training images, every one of the 30 val images validated.
    assert "32 train, 30 val images" in " ".join(result.stderr.split())
    # Top-1 in the specialist's space: 8 → 0, 3 → 1, every other digit → __other__.
    y = np.array([{8: 0, 3: 1}.get(int(label), 2) for label in store.split("val").labels])
    top1 = float(np.mean(np.argmax(store.read(pred.name, "val"), axis=1) == y))
    assert pred.metrics["top1"] == pytest.approx(top1, abs=1 / 30 + 1e-9)  # float16 ties


def test_weak_classes_max_and_min(labelled_store, run_cli):
    # accuracies: 3 → 0/3, 5 → 1/3, 7 → 2/3, the rest 1.0
    store, y = labelled_store
    predicted = y.copy()
    predicted[y == 3] = 0
    predicted[np.flatnonzero(y == 5)[:2]] = 6
    predicted[np.flatnonzero(y == 7)[0]] = 1
    store.write_prediction("voted", "val", kind="labels", labels=predicted)

    def weak(*options):
        res = run_cli("weak-classes", store.path, "voted", "--json", *options)
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)["weak"]

    assert weak("--threshold", "0.9") == ["3", "5", "7"]
    assert weak("--threshold", "0.9", "--max", "2") == ["3", "5"]  # the worst two
    assert weak("--threshold", "0.2", "--min", "2") == ["3", "5"]  # only 3 below: the 2 worst
    assert weak("--threshold", "0.2", "--min", "4") == ["3", "5", "7", "0"]  # ties by class id
    assert weak("--threshold", "0.9", "--min", "1") == ["3", "5", "7"]  # enough below already
    assert weak("--threshold", "0.9", "--min", "2", "--max", "2") == ["3", "5"]
    assert weak("--threshold", "0.9", "--max", "0") == []


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (("--min", "3", "--max", "2"), "--min 3 is more than --max 2; lower --min or raise --max"),
        (("--max", "-1"), "Invalid value for '--max': -1 is not in the range x>=0"),
        (("--min", "-2"), "Invalid value for '--min': -2 is not in the range x>=0"),
    ],
)
def test_weak_classes_refuse_bad_counts_in_one_line(labelled_store, run_cli, options, says):
    store, y = labelled_store
    store.write_prediction("voted", "val", kind="labels", labels=y)
    res = run_cli("weak-classes", store.path, "voted", *options)
    assert res.exit_code == 2 and res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and says in lines[0], res.stderr
