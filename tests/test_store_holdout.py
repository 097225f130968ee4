"""The store's held-out fusion split (issue 16, item 3): ``ee store init --holdout``, what
producers train, validate and predict on such a store, and ``ee combine --fit/--apply``."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from helpers import small_digits, snapshot

from ensemble_engine.data import open_dataset
from ensemble_engine.errors import DataError, RecipeError, StoreError
from ensemble_engine.holdout import (
    HoldoutRecord,
    HoldoutSource,
    trained_splits,
    with_store_holdout,
)
from ensemble_engine.producer import ProduceRequest
from ensemble_engine.store import open_store

FAST = ("--set", "defaults=digits", "--img-size", "16", "--epochs", "1", "--workers", "0")
FAST += ("--test-sizes", "16")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Digits, 10 train + 5 val per class (15 merged: 3 held out at 0.2), 20 test images."""
    root = tmp_path_factory.mktemp("holdout") / "d"
    return small_digits(root, train_per_class=10, val_per_class=5, test_images=20)


def init(run_cli, store: Path, data: Path, *args: str):
    res = run_cli("store", "init", store, "--data", data, *args)
    assert res.exit_code == 0, res.output
    return res


def held_ids(store: Path) -> list[str]:
    return list(open_store(store, "r").split("holdout").sample_ids)


# --- the split and its record ------------------------------------------------------------------


def test_store_init_holdout_is_stratified_prefixed_and_recorded(tmp_path, data, run_cli):
    store = tmp_path / "s.zarr"
    res = init(run_cli, store, data, "--holdout", "0.2")
    assert "holdout: 30 samples (sha256:" in res.stdout
    assert "held out of train+val (fraction 0.2, seed 0)" in res.stdout
    st = open_store(store, "r")
    assert st.split_names() == ["holdout", "test", "train", "val"]
    assert st.group.attrs["holdout"] == {
        "split": "holdout",
        "fraction": 0.2,
        "seed": 0,
        "from": ["train", "val"],
    }
    assert st.holdout_record() == HoldoutRecord(0.2, 0)
    split = st.split("holdout")
    assert Counter(split.labels.tolist()) == {c: 3 for c in range(10)}  # round(15 * 0.2) each
    source = open_dataset(data)
    merged = {f"{s}/{x.sample_id}": x.label for s in ("train", "val") for x in source.samples(s)}
    assert all(merged[i] == label for i, label in zip(split.sample_ids, split.labels, strict=True))
    assert {i.split("/")[0] for i in split.sample_ids} == {"train", "val"}  # from both
    assert run_cli("validate", store).exit_code == 0


def test_holdout_is_seeded_and_deterministic(tmp_path, data, run_cli):
    init(run_cli, tmp_path / "a.zarr", data, "--holdout", "0.2", "--holdout-seed", "5")
    init(run_cli, tmp_path / "b.zarr", data, "--holdout", "0.2", "--holdout-seed", "5")
    init(run_cli, tmp_path / "c.zarr", data, "--holdout", "0.2", "--holdout-seed", "6")
    assert held_ids(tmp_path / "a.zarr") == held_ids(tmp_path / "b.zarr")
    assert set(held_ids(tmp_path / "a.zarr")) != set(held_ids(tmp_path / "c.zarr"))
    # again on the same store, with or without the option: the same split, nothing changed
    before = open_store(tmp_path / "a.zarr", "r").split_header("holdout").fingerprint
    for args in (("--holdout", "0.2", "--holdout-seed", "5"), ()):
        res = init(run_cli, tmp_path / "a.zarr", data, *args)
        assert f"holdout: 30 samples ({before})" in res.stdout
        assert "re-registered" not in res.stdout


def test_another_holdout_on_the_same_store_is_refused(tmp_path, data, run_cli):
    store = tmp_path / "s.zarr"
    init(run_cli, store, data, "--holdout", "0.2")
    res = run_cli("store", "init", store, "--data", data, "--holdout", "0.3")
    assert res.exit_code == 2
    assert "drawn with fraction 0.2, seed 0, not fraction 0.3, seed 0" in res.stderr
    assert open_store(store, "r").holdout_record() == HoldoutRecord(0.2, 0)


def test_a_plain_store_has_no_holdout_and_data_keeps_its_splits(tmp_path, data, run_cli):
    store = tmp_path / "s.zarr"
    init(run_cli, store, data)
    st = open_store(store, "r")
    assert st.holdout_record() is None and "holdout" not in st.split_names()
    source = open_dataset(data)
    assert with_store_holdout(source, st) is source
    assert trained_splits(source) == ("train",)


def test_holdout_source_partitions_train_and_val(data):
    source = HoldoutSource(open_dataset(data), HoldoutRecord(0.2, 3))
    assert source.split_names() == ["train", "val", "test", "holdout"]
    assert trained_splits(source) == ("train", "val")
    kept, held = source.training_samples()
    assert source.samples("holdout") == held
    assert {s.sample_id for s in kept}.isdisjoint(s.sample_id for s in held)
    assert len(kept) + len(held) == 150
    assert source.samples("test") == open_dataset(data).samples("test")


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"split": "holdout", "fraction": 1.5, "seed": 0, "from": ["train", "val"]}, "fraction"),
        ({"split": "other", "fraction": 0.2, "seed": 0, "from": ["train", "val"]}, "split"),
        ({"split": "holdout", "fraction": 0.2, "seed": -1, "from": ["train", "val"]}, "seed"),
        ({"split": "holdout", "fraction": 0.2, "seed": 0}, "mapping of"),
        ("0.2", "mapping of"),
    ],
)
def test_a_damaged_holdout_record_is_one_line_and_invalid(tmp_path, data, run_cli, attrs, message):
    store = tmp_path / "s.zarr"
    init(run_cli, store, data, "--holdout", "0.2")
    st = open_store(store, "a")
    st.group.attrs["holdout"] = attrs
    with pytest.raises(StoreError, match=f"holdout record is damaged: .*{message}"):
        open_store(store, "r").holdout_record()
    res = run_cli("validate", store)
    assert res.exit_code == 1 and "attrs holdout" in res.stderr, res.output


# --- what a producer on such a store trains, validates and predicts on --------------------------


def request(data: Path, store: Path, tmp_path: Path, **fields) -> ProduceRequest:
    return ProduceRequest(
        recipe="resnet10t-ce",
        data_dir=data,
        store=open_store(store, "a"),
        runs_dir=tmp_path / "runs",
        overrides={"epochs": 1, "img_size": 16, "workers": 0, "set": {"defaults": "digits"}},
        **fields,
    )


def test_producer_and_specialist_train_on_train_val_minus_holdout(tmp_path, data, run_cli):
    from ee_timm.producer import checked_request

    store = tmp_path / "s.zarr"
    init(run_cli, store, data, "--holdout", "0.2")
    held = set(held_ids(store))
    merged = {f"{s}/{x.sample_id}" for s in ("train", "val") for x in open_dataset(data).samples(s)}
    ok = checked_request(request(data, store, tmp_path), None)
    assert {s.sample_id for s in ok.train_samples} == merged - held
    assert [s.sample_id for s in ok.val_samples] == held_ids(store)  # validated on holdout
    special = checked_request(request(data, store, tmp_path, subset=["3", "8"]), None)
    assert {s.sample_id for s in special.train_samples} <= merged - held
    assert {s.sample_id for s in special.val_samples} == held
    assert special.classes == ["3", "8", "__other__"]


def test_recipe_holdout_on_a_holdout_store_is_refused(tmp_path, data, run_cli):
    from ee_timm.producer import checked_request

    store = tmp_path / "s.zarr"
    init(run_cli, store, data, "--holdout", "0.2")
    req = request(data, store, tmp_path)
    req.overrides["holdout"] = 0.1
    with pytest.raises(RecipeError, match="recipe sets holdout 0.1 as well: drop --holdout"):
        checked_request(req, None)


def test_produce_with_recipe_holdout_on_a_holdout_store_writes_nothing(tmp_path, data, run_cli):
    store, runs = tmp_path / "s.zarr", tmp_path / "runs"
    init(run_cli, store, data, "--holdout", "0.2")
    before = snapshot(tmp_path)
    res = run_cli(
        "produce", "resnet10t-ce", "--data", data, "--store", store, "--runs-dir", runs, *FAST,
        "--holdout", "0.1",
    )  # fmt: skip
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.stderr.splitlines()[-1] == (
        "Error: the store holds a held-out split (fraction 0.2, seed 0) to validate and fuse on, "
        "and the recipe sets holdout 0.1 as well: drop --holdout (or holdout: from the recipe), "
        "or use a store without a holdout"
    )
    assert snapshot(tmp_path) == before


def test_data_without_val_is_refused_for_a_holdout(tmp_path, data):
    only_train = open_dataset(data / "train")  # plain ImageFolder: one split, train
    with pytest.raises(DataError, match="has no val split to draw the held-out fusion split"):
        HoldoutSource(only_train, HoldoutRecord(0.2))


def test_holdout_pipeline_end_to_end(tmp_path, data, run_cli, monkeypatch):
    """The seed's setup: store init --holdout, two models, fused with fit holdout."""
    import ee_timm.producer as producer

    store, runs = tmp_path / "s.zarr", tmp_path / "runs"
    init(run_cli, store, data, "--holdout", "0.2")
    held = held_ids(store)
    trained: list[tuple[list[str], list[str]]] = []
    real_train = producer.train

    def spy(recipe, train_samples, val_samples, *args, **kwargs):
        trained.append(([s.sample_id for s in train_samples], [s.sample_id for s in val_samples]))
        return real_train(recipe, train_samples, val_samples, *args, **kwargs)

    monkeypatch.setattr(producer, "train", spy)
    for recipe in ("resnet10t-ce", "resnet10t-taylor"):
        args = ("--data", data, "--store", store, "--runs-dir", runs, *FAST)
        res = run_cli("produce", recipe, *args)
        assert res.exit_code == 0, res.output
        line = "training on train+val minus the store's holdout split (30 images), validating on"
        assert f"{line} holdout\n" in res.stderr, res.stderr
    assert len(trained) == 2
    for train_ids, val_ids in trained:
        assert set(train_ids).isdisjoint(held) and len(train_ids) == 120
        assert val_ids == held
    st = open_store(store, "r")
    for name in ("resnet10t-ce-s16", "resnet10t-taylor_ce-s16"):
        assert st.exists(name, "holdout") and st.exists(name, "test")
        assert not st.exists(name, "val") and not st.exists(name, "train")
    run_dirs = sorted(runs.iterdir())
    assert json.loads((run_dirs[0] / "holdout.json").read_text())["fraction"] == 0.2

    res = run_cli("combine", "vipriors2021", "--store", store, "--output", "stage2")
    assert res.exit_code == 2 and "add --fit holdout" in res.stderr  # fit: val is refused here
    res = run_cli(
        "combine", "vipriors2021", "--store", store, "--fit", "holdout", "--output", "stage2",
        "--json",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["fit"], out["splits"]) == ("holdout", ["holdout", "test"])
    st = open_store(store, "r")
    assert st.exists("stage2", "holdout") and st.exists("stage2", "test")
    assert not st.exists("stage2", "val")
    assert run_cli("weak-classes", store, "stage2", "--split", "holdout").exit_code == 0

    # ee predict re-predicts holdout and test; into a store without the holdout it is refused
    res = run_cli("predict", run_dirs[0], "--data", data, "--store", store, "--test-sizes", "20")
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().endswith("resnet10t-ce-s20/test, resnet10t-ce-s20/holdout")
    plain = tmp_path / "plain.zarr"
    init(run_cli, plain, data)
    res = run_cli("predict", run_dirs[0], "--data", data, "--store", plain)
    assert res.exit_code == 2 and "this store has none" in res.stderr, res.output
    assert open_store(plain, "r").list() == []
