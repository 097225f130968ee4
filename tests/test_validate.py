"""``ee validate`` on a good store and on hand-broken ones."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from ensemble_engine.store import open_store
from ensemble_engine.validate import validate_store


@pytest.fixture
def good(tmp_path):
    st = open_store(tmp_path / "s.zarr", "w")
    st.set_classes(["a", "b", "c"])
    st.add_split("val", ["x", "y", "z", "w"], [0, 1, 2, 0])
    st.write_prediction(
        "m",
        "val",
        kind="logits",
        scores=np.eye(3)[[0, 1, 2, 1]] * 4,
        meta={"source": {"type": "import", "plugin": "ee"}, "test_size": 32},
    )
    st.write_prediction("h", "val", kind="labels", labels=np.array([0, 1, 2, 2]))
    return st


def test_good_store_is_valid(good, run_cli):
    assert validate_store(good.path) == []
    res = run_cli("validate", good.path)
    assert res.exit_code == 0 and "valid" in res.output


def _break_fingerprint(g):
    g["splits/val"].attrs.update({"fingerprint": "sha256:0000000000000000"})


def _break_shape(g):
    del g["predictions/m/val/scores"]
    g["predictions/m/val"].create_array("scores", shape=(3, 3), dtype="float16")


def _break_dtype(g):
    del g["predictions/h/val/label"]
    g["predictions/h/val"].create_array("label", shape=(4,), dtype="float64")


def _break_kind(g):
    g["predictions/m/val"].attrs.update({"kind": "softmaxes"})


def _break_root(g):
    g.attrs.update({"classes": []})


def _drop_array(g):
    del g["predictions/m/val/scores"]


def _break_label_range(g):
    g["splits/val/label"][:] = np.array([0, 1, 7, 0], dtype=np.int32)


def _break_split_ref(g):
    g["predictions/m/val"].attrs.update({"split_fingerprint": "sha256:ffffffffffffffff"})


def _break_metrics(g):
    g["predictions/m/val"].attrs.update({"metrics": {"top1": 1.5}})


BREAKS = {
    "edited split fingerprint": (_break_fingerprint, "does not match its sample ids"),
    "scores of the wrong shape": (_break_shape, "shape [3, 3], expected [4, 3]"),
    "labels of the wrong dtype": (_break_dtype, "dtype float64"),
    "unknown kind": (_break_kind, "'softmaxes' is not one of"),
    "empty class list": (_break_root, "classes"),
    "missing scores array": (_drop_array, "missing array 'scores'"),
    "label outside the classes": (_break_label_range, "labels outside -1..2"),
    "prediction of another split": (_break_split_ref, "split_fingerprint sha256:ffff"),
    "impossible metric": (_break_metrics, "1.5 is greater than the maximum"),
}


@pytest.mark.parametrize("fault", list(BREAKS), ids=list(BREAKS))
def test_hand_broken_store_is_caught(good, fault, run_cli):
    breaker, message = BREAKS[fault]
    breaker(zarr.open_group(good.path, mode="r+"))
    problems = validate_store(good.path)
    assert any(message in p for p in problems), problems
    res = run_cli("validate", good.path)
    assert res.exit_code == 1
    assert message in res.stderr
    assert "Traceback" not in res.output


def test_newer_version_is_reported(good):
    zarr.open_group(good.path, mode="r+").attrs.update(
        {"ee": {"format": "ee.predictions", "version": 9}}
    )
    assert validate_store(good.path) == ["format version 9 is newer than this reader (1)"]


def test_not_a_store(tmp_path):
    (tmp_path / "nothing").mkdir()
    problems = validate_store(str(tmp_path / "nothing"))
    assert len(problems) >= 1


def test_unfinished_write_is_not_a_problem(good):
    w = good.prediction_writer("half", "val", kind="logits")
    w.__enter__()
    w.write(np.zeros((2, 3)))
    w.lock.release()
    assert validate_store(good.path) == []
