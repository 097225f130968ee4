"""``ee import --fact`` / ``--classes``: predictions made elsewhere join the shipped fusion graph.

Refusals of bad facts and class lists are in the bad-input catalogue (tests/test_bad_input.py,
the issue 16 block); here are the round trips: facts typed as ``ee produce`` writes them,
selected by the vipriors2021 graph's ``where:``, and an imported specialist fed to ``coverage``.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np
import pytest

from ensemble_engine.errors import StoreError
from ensemble_engine.import_facts import parse_facts, read_class_list
from ensemble_engine.store import open_store

LOSSES = {"ce": "ce", "taylor": "taylor_ce"}  # as given to --fact -> as recorded
SIZES = (224, 320)
MODELS = ("neta", "netb")
SUBSET = ["3", "5", "8"]  # the specialist's classes, before __other__
SPLITS = ("val", "test")


def base_logits(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A model that is right on most rows, but, like every base model here, takes half the
    rows of 3, 5 and 8 for the next class of that subset (so no vote of them can fix those)."""
    n = len(labels)
    x = rng.normal(size=(n, 10)).astype(np.float32)
    x[np.arange(n), labels] += 2.5
    confused = np.isin(labels, [3, 5, 8]) & (np.arange(n) % 2 == 0)
    wrong = np.array([{3: 5, 5: 8, 8: 3}.get(int(y), 0) for y in labels])
    x[np.flatnonzero(confused), wrong[confused]] += 6.0
    return x


def specialist_logits(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Columns 3, 5, 8, __other__: right on nearly every row."""
    n = len(labels)
    col = np.array([SUBSET.index(str(y)) if str(y) in SUBSET else 3 for y in labels])
    x = rng.normal(size=(n, 4)).astype(np.float32)
    x[np.arange(n), col] += 4.0
    return x


@pytest.fixture
def imported(tmp_path, digits_dir, run_cli) -> Path:
    """A store of the digits with 2 losses x 2 sizes x 2 models and one specialist at 2 sizes,
    all imported from .npy files with facts."""
    store = tmp_path / "s.zarr"
    res = run_cli("store", "init", store, "--data", digits_dir)
    assert res.exit_code == 0, res.output
    st = open_store(store, "r")
    rng = np.random.default_rng(0)
    (tmp_path / "cov.txt").write_text("\ufeff 8\n\n3  \n5\n__other__\n\n", encoding="utf-8")
    order = ["8", "3", "5"]  # the file's order: the specialist's columns follow it
    for split in SPLITS:
        labels = st.split(split).labels.astype(np.int64)
        assert (labels >= 0).all()
        for loss in LOSSES:
            for size in SIZES:
                for model in MODELS:
                    name = f"{model}-{loss}-s{size}"
                    path = tmp_path / f"{name}-{split}.npy"
                    np.save(path, base_logits(labels, rng))
                    res = run_cli(
                        "import", store, path, "--split", split, "--id", name,
                        "--fact", f"loss={loss}", "--fact", f"test_size={size}",
                        "--fact", f"backbone={model}",
                    )  # fmt: skip
                    assert res.exit_code == 0, res.output
        for size in SIZES:
            path = tmp_path / f"cov-{size}-{split}.npy"
            x = specialist_logits(labels, rng)
            np.save(path, x[:, [SUBSET.index(c) for c in order] + [3]])
            res = run_cli(
                "import", store, path, "--split", split, "--id", f"cov-mynet-s{size}",
                "--classes", tmp_path / "cov.txt",
                "--fact", "run=cov-mynet", "--fact", f"test_size={size}",
            )  # fmt: skip
            assert res.exit_code == 0, res.output
    return store


def test_imports_with_facts_run_the_shipped_graph(imported, run_cli):
    res = run_cli("ls", imported, "--json")
    assert res.exit_code == 0, res.output
    rows = {r["id"]: r for r in json.loads(res.stdout)["predictions"]}
    assert rows["netb-taylor-s320/val"]["facts"] == {
        "backbone": "netb",
        "loss": "taylor_ce",  # the alias recorded under its registered name, as ee produce does
        "test_size": 320,  # a number, as ee produce writes it
    }
    # ee ls shows every fact an import was given, beyond the ones producers write
    assert rows["cov-mynet-s224/test"]["facts"] == {"test_size": 224, "run": "cov-mynet"}
    st = open_store(imported, "r")
    spec = st.get("cov-mynet-s224", "test")
    assert spec.attrs["classes"] == ["8", "3", "5", "__other__"]
    assert spec.attrs["run"] == "cov-mynet"
    assert spec.source["params"] == {
        "file": "cov-224-test.npy",
        "facts": ["run", "test_size"],
        "classes_file": "cov.txt",
    }

    res = run_cli("combine", "vipriors2021", "--store", imported)
    assert res.exit_code == 0, res.output
    st = open_store(imported, "r")
    for loss in LOSSES.values():
        for size in SIZES:
            node = st.get(f"soft_{loss}_{size}", "val")
            short = "taylor" if loss == "taylor_ce" else loss
            assert node.attrs["inputs"] == [f"{m}-{short}-s{size}" for m in MODELS]
    stage2 = st.get("stage2", "val")
    assert sorted(stage2.attrs["inputs"]) == sorted(
        f"soft_{loss}_{size}" for loss in LOSSES.values() for size in SIZES
    )
    for split in SPLITS:
        final = st.get("final", split)
        assert final.attrs["roles"] == {
            "base": ["stage2"],
            "specialists": ["cov-mynet-s224", "cov-mynet-s320"],
        }
        state = final.attrs["state"]
        # one specialist model: the run fact made its two sizes one covered result
        assert state["specialists"] == {"cov-mynet": ["cov-mynet-s224", "cov-mynet-s320"]}
        assert state["covered"]["cov-mynet"]["top1"] > 0.95
        # the base models all confuse 3/5/8 on half their rows; the specialist fixes that
        gain = final.metrics["top1"] - st.get("stage2", split).metrics["top1"]
        assert gain > 0.05, (split, gain)


def test_facts_are_typed_as_ee_produce_writes_them():
    facts, notes = parse_facts(
        [
            "test_size=224",
            "loss=ls",
            "backbone=1",
            "seed= 3 ",
            "run=2024",
            "lr=1e-3",
            "pretrained=true",
            "tag='224'",
            "day=2024-01-02",
            "note=from the old cluster",
        ]
    )
    assert facts == {
        "test_size": 224,
        "loss": "label_smoothing",
        "backbone": "1",
        "seed": 3,
        "run": "2024",
        "lr": 0.001,
        "pretrained": True,
        "tag": "224",
        "day": "2024-01-02",
        "note": "from the old cluster",
    }
    assert [type(facts[k]) for k in ("test_size", "seed", "lr")] == [int, int, float]
    assert not isinstance(facts["day"], datetime.date)
    assert notes == ["loss 'ls' recorded as 'label_smoothing' (its registered name)"]


def test_a_loss_ee_does_not_know_is_recorded_as_given():
    assert parse_facts(["loss=arcface"]) == ({"loss": "arcface"}, [])
    assert parse_facts(["loss=taylor_ce"]) == ({"loss": "taylor_ce"}, [])


@pytest.mark.parametrize(
    "item",
    ["classes=a", "kind=probs", "inputs=x", "node_hash=1", "complete=true", "name=x", "view=a"],
)
def test_reserved_keys_are_refused(item):
    with pytest.raises(StoreError, match="is reserved by the store format"):
        parse_facts([item])


def test_class_list_keeps_the_file_order(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes("\ufeffb\r\n  c \r\n\r\n".encode())
    assert read_class_list(path, ["a", "b", "c"]) == ["b", "c"]
    path.write_text("c\na\nb\n__other__")
    assert read_class_list(path, ["a", "b", "c"]) == ["c", "a", "b", "__other__"]


def test_specialist_labels_and_csv_import(tmp_path, run_cli):
    """Labels count in the listed class space; a CSV's columns follow the list."""
    store = tmp_path / "s.zarr"
    st = open_store(store, "w")
    st.set_classes(["a", "b", "c"])
    st.add_split("val", [f"v{i}.png" for i in range(6)], [0, 1, 2, 0, 1, 2])
    (tmp_path / "c.txt").write_text("c\n__other__\n")
    np.save(tmp_path / "l.npy", np.array([1, 1, 0, 1, 1, 0]))
    res = run_cli(
        "import", store, tmp_path / "l.npy", "--split", "val", "--id", "lab",
        "--classes", tmp_path / "c.txt",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    pred = open_store(store, "r").get("lab", "val")
    assert pred.attrs["classes"] == ["c", "__other__"]
    assert pred.metrics["top1"] == 1.0  # a and b count as __other__
    rows = ["filename,logit_0,logit_1"]
    rows += [f"v{i}.png,{i % 3 == 2:d},{i % 3 != 2:d}" for i in range(6)]
    (tmp_path / "x.csv").write_text("\n".join(rows) + "\n")
    res = run_cli(
        "import", store, tmp_path / "x.csv", "--split", "val", "--id", "csv",
        "--classes", tmp_path / "c.txt", "--fact", "test_size=32",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    pred = open_store(store, "r").get("csv", "val")
    assert pred.attrs["test_size"] == 32 and pred.shape == (6, 2)
    assert pred.metrics["top1"] == 1.0
