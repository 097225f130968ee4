"""Metrics follow the tie rule of ``ee export`` (issue 18, item 2).

``ee export`` ranks classes with ``np.argsort(-scores, kind="stable")``: equal scores go to the
lowest class index. A row counts for top-1 only if the exported label is right, for top-5 only if
the label is among the five classes exported, and the fusion's fits score inputs the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ee_fusion.selection import score

from ensemble_engine.commands.analysis import class_accuracies
from ensemble_engine.metrics import MetricAccumulator, label_rank, predicted_class
from ensemble_engine.store import open_store

# --- the rule, on hand-computed rows -----------------------------------------------------------


def test_all_zero_logits_score_the_share_of_class_0():
    labels = np.array([0, 1, 5, 9, 4, 0])
    acc = MetricAccumulator("logits")
    acc.update(np.zeros((6, 10), np.float16), labels)
    # export lists classes 0, 1, 2, 3, 4 on every row: top-1 is right for label 0 (2 rows),
    # top-5 for labels 0, 1, 4 (4 rows)
    assert acc.result()["top1"] == pytest.approx(2 / 6)
    assert acc.result()["top5"] == pytest.approx(4 / 6)


def test_one_hot_probs_top5_counts_the_exported_five_only():
    predicted = [7, 7, 7, 2]
    labels = np.array([3, 4, 7, 1])
    probs = np.eye(10, dtype=np.float32)[predicted]
    # export order, row 0: 7, 0, 1, 2, 3 | 4 ... → label 3 at position 4 (in), label 4 at 5 (out)
    # row 2: label 7 first; row 3: 2, 0, 1 → label 1 at position 2
    np.testing.assert_array_equal(label_rank(probs, labels), [4, 5, 0, 2])
    acc = MetricAccumulator("probs")
    acc.update(probs, labels)
    assert acc.result()["top1"] == pytest.approx(1 / 4)
    assert acc.result()["top5"] == pytest.approx(3 / 4)


@pytest.mark.parametrize(("label", "correct"), [(5, False), (2, True)])
def test_a_tie_between_classes_2_and_5_goes_to_2(label, correct):
    row = np.array([[0.0, 0.1, 0.4, 0.0, 0.0, 0.4, 0.1]], np.float32)
    assert predicted_class(row).tolist() == [2]
    acc = MetricAccumulator("probs")
    acc.update(row, np.array([label]))
    assert acc.result()["top1"] == (1.0 if correct else 0.0)
    assert label_rank(row, np.array([label])).tolist() == [0 if correct else 1]


def test_label_rank_is_the_position_in_exports_ordering():
    rng = np.random.default_rng(4)
    for dtype in (np.float16, np.float32):
        scores = rng.integers(0, 4, size=(500, 9)).astype(dtype)  # many ties
        labels = rng.integers(0, 9, 500)
        order = np.argsort(-scores, axis=1, kind="stable")
        where = np.argmax(order == labels[:, None], axis=1)
        np.testing.assert_array_equal(label_rank(scores, labels), where)
        np.testing.assert_array_equal(predicted_class(scores), order[:, 0])


# --- stored values: float16 rounding makes ties -------------------------------------------------


@pytest.fixture
def store(tmp_path):
    st = open_store(tmp_path / "s.zarr", "w")
    st.set_classes(["a", "b", "c", "d"])
    st.add_split("val", [f"v{i}.png" for i in range(8)], [0, 1, 2, 3, 0, 1, 2, 3])
    return st


@pytest.mark.parametrize(("dtype", "top1"), [("float16", 0.0), ("float32", 1.0)])
def test_metrics_are_computed_on_the_stored_values(store, dtype, top1):
    # 1.0002 beats 1.0 in float32 but rounds to 1.0 in float16: stored, the row ties and
    # export writes class 0, so the label (1) is wrong
    scores = np.zeros((8, 4), np.float32)
    scores[:, 0], scores[:, 1] = 1.0, 1.0002
    labels = np.full(8, 1)
    store.add_split("tie", [f"t{i}.png" for i in range(8)], labels)
    pred = store.write_prediction("m", "tie", kind="logits", scores=scores, dtype=dtype)
    assert pred.metrics["top1"] == top1
    exported = predicted_class(store.read("m", "tie"))
    assert np.mean(exported == labels) == top1


def test_per_class_accuracy_of_weak_classes_uses_the_rule(store):
    store.write_prediction("zero", "val", kind="logits", scores=np.zeros((8, 4)))
    acc = {a.cls: a.accuracy for a in class_accuracies(store, "zero", "val")}
    assert acc == {"a": 1.0, "b": 0.0, "c": 0.0, "d": 0.0}


def test_selection_scores_a_tied_mean_as_export_would():
    total = np.full((4, 3), 1 / 3, np.float32)  # every row tied: export writes class 0
    hits, _ = score(total, 1, np.array([0, 1, 2, 0]))
    assert hits == 2


# --- end to end: the fusion no longer trusts a constant model ----------------------------------

GRAPH = """\
version: 1
fit: val
apply: [val]
nodes:
  sv:
    combiner: soft_vote
    inputs: [m1, m2, m3, zero]
    params: {weights: softmax_score, temperature: 0.01}
  sel:
    combiner: select
    inputs: [m1, m2, m3, zero]
    params: {size: 4}
output: sv
"""


def test_constant_model_is_scored_and_fused_as_exported(tmp_path: Path, run_cli):
    k, n = 5, 100
    rng = np.random.default_rng(0)
    labels = np.arange(n) % k  # 20 rows of each class: the constant model is right on 20
    st = open_store(tmp_path / "s.zarr", "w")
    st.set_classes([f"c{i}" for i in range(k)])
    st.add_split("val", [f"v{i:03d}.png" for i in range(n)], labels)
    for i, noise in enumerate([1.0, 1.5, 2.0], 1):
        logits = rng.normal(size=(n, k)) * noise
        logits[np.arange(n), labels] += 2.0
        np.save(tmp_path / f"m{i}.npy", logits.astype(np.float32))
    np.save(tmp_path / "zero.npy", np.zeros((n, k), np.float32))
    for name in ("m1", "m2", "m3", "zero"):
        res = run_cli(
            "import", tmp_path / "s.zarr", tmp_path / f"{name}.npy", "--split", "val", "--id", name
        )
        assert res.exit_code == 0, res.output
    assert "top1 0.2000" in res.stdout  # the import's own report of the constant model

    st = open_store(tmp_path / "s.zarr", "r")
    zero = st.get("zero", "val")
    assert zero.metrics["top1"] == pytest.approx(0.2)
    assert zero.metrics["top5"] == 1.0  # five classes: all listed
    exported = run_cli("export", tmp_path / "s.zarr", "zero/val").stdout.splitlines()[1:]
    assert {line.rsplit(",", 1)[1] for line in exported} == {"0"}

    (tmp_path / "g.yaml").write_text(GRAPH)
    res = run_cli("combine", tmp_path / "g.yaml", "--store", tmp_path / "s.zarr")
    assert res.exit_code == 0, res.output
    st = open_store(tmp_path / "s.zarr", "r")
    sv = st.get("sv", "val").attrs["state"]
    assert sv["scores"]["zero"] == pytest.approx(0.2)
    assert max(sv["weights"], key=sv["weights"].get) == "m1"
    assert sv["weights"]["zero"] < 1e-6
    assert st.get("sel", "val").attrs["state"]["weights"]["zero"] == 0
    best_input = max(st.get(m, "val").metrics["top1"] for m in ("m1", "m2", "m3", "zero"))
    assert best_input < 1.0  # the gain of a node is measured against a real input
