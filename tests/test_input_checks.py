"""Bad imports and names refused, huge weights handled (issue 18, items 3, 5, 12, 16, 17, 19).

The one-line refusals of the CLI are in the bad-input catalogue (tests/test_bad_input.py); here
are the boundaries: what must still pass (float16-rounded probabilities, identical duplicate
rows, a BOM) and the maths (weight fractions) against hand-computed values.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from ee_data.imagefolder import ImageFolderSource
from ee_fusion.common import resolve_weights
from ee_fusion.mean_probs import weight_fractions, weighted_mean_probs
from ee_fusion.voting import SoftVote, hard_vote
from ensemble_engine.schemas import load_schema
from PIL import Image
from scipy.special import softmax

from ensemble_engine.combiner import InputChunk
from ensemble_engine.commands.produce import read_class_list
from ensemble_engine.errors import DataError, GraphError, StoreError
from ensemble_engine.readers import PROBS_SUM_TOLERANCE, check_probs
from ensemble_engine.records import check_name, valid_name
from ensemble_engine.store import open_store
from ensemble_engine.validate import validate_store

# --- item 3: probabilities must be probabilities -----------------------------------------------


def test_float16_rounded_probabilities_of_1000_classes_pass():
    z = np.random.default_rng(0).normal(size=(300, 1000)) * 4
    p = softmax(z, axis=1)
    check_probs(p, "p.npy")
    rounded = p.astype(np.float16)
    assert np.abs(rounded.astype(np.float64).sum(axis=1) - 1).max() > 1e-5  # rounding shows
    check_probs(rounded, "p16.npy")


@pytest.mark.parametrize(
    ("row", "ok"),
    [
        ([0.5, 0.5 - PROBS_SUM_TOLERANCE * 0.9, 0.0], True),
        ([0.5, 0.5 - PROBS_SUM_TOLERANCE * 1.1, 0.0], False),
        ([1.0, 0.0, 0.0], True),
        ([1.2, -0.2, 0.0], False),  # sums to 1, but no probabilities
        ([60.0, 30.0, 10.0], False),  # percentages
        ([5.0, 5.0, 5.0], False),
        ([0.0, 0.0, 0.0], False),
    ],
)
def test_probability_rows(row, ok):
    scores = np.array([[0.2, 0.3, 0.5], row])
    if ok:
        check_probs(scores, "x.npy")
    else:
        with pytest.raises(StoreError, match=r"x\.npy: row index 1 is no probability"):
            check_probs(scores, "x.npy")


def test_a_csv_row_is_named_by_its_file(tmp_path, run_cli):
    st = open_store(tmp_path / "s.zarr", "w")
    st.set_classes(["a", "b"])
    st.add_split("val", ["x.png", "y.png"], [0, 1])
    csv = "\ufefffilename,prob_0,prob_1\nx.png,0.25,0.75\ny.png,0.9,0.1\n"  # with a BOM
    (tmp_path / "p.csv").write_text(csv, encoding="utf-8")
    res = run_cli("import", tmp_path / "s.zarr", tmp_path / "p.csv", "--split", "val", "--id", "p")
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(st.read("p", "val"), [[0.25, 0.75], [0.9, 0.1]], atol=1e-3)
    (tmp_path / "q.csv").write_text(csv.replace("0.9,0.1", "90,10"), encoding="utf-8")
    with pytest.raises(StoreError, match=r"q\.csv: the row of 'y\.png' is no probability"):
        check_probs(np.array([[0.25, 0.75], [90, 10]]), "q.csv", ["x.png", "y.png"])
    res = run_cli("import", tmp_path / "s.zarr", tmp_path / "q.csv", "--split", "val", "--id", "q")
    assert res.exit_code == 2 and "the row of 'y.png'" in res.stderr
    assert validate_store(str(tmp_path / "s.zarr")) == []


# --- item 12: ee import --dtype ------------------------------------------------------------------


def test_import_dtype_float32_keeps_large_logits(tmp_path, run_cli):
    st = open_store(tmp_path / "s.zarr", "w")
    st.set_classes(["a", "b"])
    st.add_split("val", ["x.png", "y.png"], [0, 1])
    logits = np.array([[1e5, 0.0], [0.0, 7e4]], np.float32)
    np.save(tmp_path / "z.npy", logits)
    args = ("import", tmp_path / "s.zarr", tmp_path / "z.npy", "--split", "val", "--id", "z")
    res = run_cli(*args)
    assert res.exit_code == 2 and "import them with --dtype float32" in res.stderr
    res = run_cli(*args, "--dtype", "float32")
    assert res.exit_code == 0, res.output
    assert st.group["predictions/z/val/scores"].dtype == np.float32
    np.testing.assert_array_equal(st.read("z", "val"), logits)
    assert st.get("z", "val").metrics["top1"] == 1.0


# --- item 5: weights whose sum overflows --------------------------------------------------------


def test_weight_fractions_survive_a_sum_beyond_float64():
    assert weight_fractions([1.0e308, 1.0e308]) == [0.5, 0.5]
    assert weight_fractions([1.0e308, 0.0, 3.0e307]) == pytest.approx([1 / 1.3, 0.0, 0.3 / 1.3])
    assert weight_fractions([2.0, 1.0, 1.0]) == [0.5, 0.25, 0.25]


def test_weighted_mean_of_huge_weights_is_the_mean():
    p1, p2 = np.array([[0.8, 0.2]], np.float32), np.array([[0.4, 0.6]], np.float32)
    chunks = [InputChunk(i, "probs", ["a", "b"], {}, scores=p) for i, p in (("x", p1), ("y", p2))]
    np.testing.assert_allclose(weighted_mean_probs(chunks, [1e308, 1e308]), [[0.6, 0.4]])


@pytest.mark.parametrize("weights", [[1.0e308, 1.0e308], [1e-31, 1e-31]])
def test_weights_outside_the_range_are_refused(weights):
    with pytest.raises(GraphError, match="scale them"):
        resolve_weights(weights, ["x", "y"])


def test_soft_vote_params_refuse_huge_weights():
    with pytest.raises(GraphError, match="greater than the maximum of 1e"):
        SoftVote({"weights": [1.0e308, 1.0e308]}, classes=["a", "b"])


def test_hard_vote_small_weights_still_decide():
    # one input votes a with weight 1e-7, the other b with 3e-7: b wins (the old tolerance,
    # 1e-6 absolute, made every class a tie and gave the row to the lowest index, a)
    labels, votes = hard_vote([np.array([0]), np.array([1])], [1e-7, 3e-7], 2)
    assert labels.tolist() == [1]


# --- item 16: a UTF-8 BOM ----------------------------------------------------------------------


def test_class_list_with_a_bom(tmp_path):
    path = tmp_path / "weak.txt"
    path.write_bytes("3\n5  # confused with 3\n".encode("utf-8-sig"))
    assert read_class_list(path) == ["3", "5"]


# --- item 17: names ending in a newline ---------------------------------------------------------


@pytest.mark.parametrize("name", ["m9\n", "m9\r\n", "\nm9", "m\n9"])
def test_names_with_a_newline_are_refused(name):
    assert not valid_name(name)
    with pytest.raises(StoreError, match="invalid run id"):
        check_name(name, "run id")
    assert valid_name("m9")


def test_schema_patterns_refuse_a_final_newline():
    prediction = jsonschema.Draft202012Validator(load_schema("prediction"))
    good = {"kind": "logits", "split": "val", "split_fingerprint": "sha256:" + "0" * 16}
    good["complete"] = True
    assert list(prediction.iter_errors(good)) == []
    for key in ("split", "split_fingerprint"):
        assert list(prediction.iter_errors({**good, key: good[key] + "\n"})), key
    split = jsonschema.Draft202012Validator(load_schema("split"))
    assert list(split.iter_errors({"fingerprint": "sha256:" + "0" * 16 + "\n", "n": 1}))


def test_validate_refuses_a_prediction_named_with_a_newline(tmp_path):
    st = open_store(tmp_path / "s.zarr", "w")
    st.set_classes(["a", "b"])
    st.add_split("val", ["x.png", "y.png"], [0, 1])
    st.write_prediction("m9", "val", kind="logits", scores=np.eye(2))
    assert validate_store(str(st.path)) == []
    folder = tmp_path / "s.zarr" / "predictions"
    shutil.copytree(folder / "m9", folder / "m9\n")
    assert any("invalid prediction name 'm9\\n'" in p for p in validate_store(str(st.path)))


# --- item 19: test/labels.csv -------------------------------------------------------------------


def _tree(root: Path, labels_csv: str) -> Path:
    for folder, count in (("train/a", 1), ("train/b", 1), ("test/imgs", 2)):
        (root / folder).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (4, 4)).save(root / folder / f"img{i}.png")
    (root / "test" / "labels.csv").write_bytes(labels_csv.encode("utf-8-sig"))  # with a BOM
    return root


def test_labels_csv_repeating_a_row_identically_is_accepted(tmp_path):
    root = _tree(tmp_path, "image,label\nimg0.png,b\nimg1.png,\nimg0.png,b\n")
    test = ImageFolderSource(root).samples("test")
    assert [(s.sample_id, s.label) for s in test] == [("img0.png", 1), ("img1.png", -1)]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("img0.png,b\nimg0.png,a\n", "line 3: image 'img0.png' is labelled 'a' here and 'b'"),
        ("img0.png,b\nimg0.png,\n", "line 3: image 'img0.png' is labelled '' here and 'b'"),
        ("img0.png,b\nimg7.png,a\n", "line 3: image 'img7.png' is not in"),
        ("imgs/img0.png,b\n", "line 2: image 'imgs/img0.png' is not in"),
    ],
)
def test_labels_csv_conflicts_and_missing_images_are_refused(tmp_path, rows, message):
    root = _tree(tmp_path, "image,label\n" + rows)
    with pytest.raises(DataError, match=message):
        ImageFolderSource(root).samples("test")
