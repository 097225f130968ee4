"""``ee frontier`` (issue 21, item 3): the accuracy–cost Pareto frontier, by hand and end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ee_report.frontier import Point, dominates, frontier_of, gflops_of, pareto_frontier

from ensemble_engine.store import open_store


def names(points: list[Point]) -> list[str]:
    return [p.name for p in points]


@pytest.mark.parametrize(
    ("points", "frontier"),
    [
        ([], []),
        ([("a", 0.5, 1.0)], ["a"]),
        # cheaper and better dominates; more costly and better stays
        ([("a", 0.5, 1.0), ("b", 0.6, 2.0), ("c", 0.55, 3.0)], ["a", "b"]),
        # equal accuracy at more cost is dominated; equal cost with less accuracy too
        ([("a", 0.7, 1.0), ("b", 0.7, 5.0), ("c", 0.6, 1.0)], ["a"]),
        # two identical points: neither dominates the other
        ([("a", 0.7, 2.0), ("b", 0.7, 2.0), ("c", 0.9, 4.0)], ["a", "b", "c"]),
        # a zero cost is a cost like any other
        ([("free", 0.2, 0.0), ("big", 0.9, 100.0), ("mid", 0.1, 10.0)], ["free", "big"]),
    ],
)
def test_frontier_by_hand(points, frontier):
    got = pareto_frontier([Point(*p) for p in points])
    assert names(got) == frontier
    for p in got:  # and by the definition
        assert not any(dominates(Point(*q), p) for q in points)


def test_dominates_is_strict():
    a = Point("a", 0.5, 1.0)
    assert not dominates(a, a)
    assert dominates(a, Point("b", 0.5, 1.5)) and dominates(a, Point("c", 0.4, 1.0))
    assert not dominates(a, Point("d", 0.6, 2.0))


def test_cost_from_attrs():
    assert gflops_of({"cost": {"gflops": 3.5, "members": ["x"]}}) == 3.5
    assert gflops_of({}) is None
    assert gflops_of({"cost": {"gflops": None, "unknown": ["x"], "members": ["x", "y"]}}) is None
    assert gflops_of({"cost": {"gflops": 4.0, "unknown": ["y"]}}) is None
    # a selection's own cost (its chosen inputs) before the sum over all it read
    assert gflops_of({"cost": {"gflops": 30.0}, "state": {"cost": {"gflops": 4.0}}}) == 4.0
    got = frontier_of(
        [("a", 0.5, {"cost": {"gflops": 1}}), ("b", 0.9, {}), ("c", None, {"cost": {"gflops": 1}})],
        "val",
    )
    assert names(got.points) == ["a"] and got.unknown == ["b"] and got.unscored == ["c"]


# --- end to end --------------------------------------------------------------------------------

CLASSES = ["a", "b", "c"]


def cost(gflops, members):
    return {
        "gflops": gflops,
        "params": 10,
        "views": 1,
        "images_per_s": 100.0,
        "device": "cpu",
        "members": members,
    }


@pytest.fixture
def store_path(tmp_path):
    """Five full-class predictions with known top-1 on val, one without cost, a specialist."""
    n = 20
    y = np.arange(n) % 3
    st = open_store(tmp_path / "s.zarr", "w")
    st.set_classes(CLASSES)
    st.add_split("val", [f"v{i}" for i in range(n)], y)
    st.add_split("test", [f"t{i}" for i in range(n)])

    def put(name, right, meta, classes=CLASSES):
        k = len(classes)
        scores = np.full((n, k), 0.1, np.float32)
        truth = y % k
        scores[np.arange(n), np.where(np.arange(n) < right, truth, (truth + 1) % k)] = 0.8
        for split in ("val", "test"):
            st.write_prediction(
                name, split, kind="probs", scores=scores, meta=meta, classes=classes
            )

    producer = {"source": {"type": "producer", "plugin": "test"}}
    put("small", 10, {**producer, "cost": cost(1.0, ["small"])})  # 0.50 at 1
    put("mid", 12, {**producer, "cost": cost(4.0, ["mid"])})  # 0.60 at 4
    put("worse", 11, {**producer, "cost": cost(8.0, ["worse"])})  # 0.55 at 8: dominated
    put("big", 16, {**producer, "cost": cost(20.0, ["big"])})  # 0.80 at 20
    put("imported", 19, {"source": {"type": "import"}})  # 0.95, cost unknown
    fused = {
        "source": {"type": "combiner"},
        "combiner": "select",
        "cost": cost(33.0, ["big", "mid", "small", "worse"]),
        "state": {"cost": cost(5.0, ["mid", "small"])},
    }
    put("sel", 14, fused)  # 0.70 at 5 (its state's cost)
    put("spec", 20, {**producer, "cost": cost(0.1, ["spec"])}, classes=["a", "__other__"])
    return tmp_path / "s.zarr"


def test_frontier_json(run_cli, store_path):
    assert open_store(store_path, "r").get("mid", "val").metrics["top1"] == pytest.approx(0.6)
    res = run_cli("frontier", store_path, "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["split"] == "val"
    points = {p["name"]: (p["top1"], p["gflops"], p["frontier"]) for p in got["points"]}
    assert points == {
        "small": (pytest.approx(0.5), 1.0, True),
        "mid": (pytest.approx(0.6), 4.0, True),
        "sel": (pytest.approx(0.7), 5.0, True),
        "worse": (pytest.approx(0.55), 8.0, False),
        "big": (pytest.approx(0.8), 20.0, True),
    }
    assert got["frontier"] == ["small", "mid", "sel", "big"]  # by cost
    assert got["cost_unknown"] == ["imported"]  # never on the frontier at zero cost
    assert "spec" not in points  # a class-subset specialist's top-1 is over its own classes


def test_frontier_table(run_cli, store_path):
    res = run_cli("frontier", store_path, "--split", "val")
    assert res.exit_code == 0, res.output
    rows = {line.split("│")[1].strip(): line for line in res.stdout.splitlines() if "│" in line}
    assert "●" in rows["big"] and "●" in rows["sel"] and "●" not in rows["worse"]
    assert "0.5500" in rows["worse"] and "20" in rows["big"]
    assert "cost unknown: imported" in res.stdout


def test_frontier_of_an_unlabelled_or_unknown_split(run_cli, store_path):
    res = run_cli("frontier", store_path, "--split", "test")
    assert res.exit_code == 0, res.output
    assert "no prediction on test has both a top-1 and a known cost" in res.stdout
    assert "no top-1 on test: big, imported, mid, sel, small, worse" in res.stdout
    res = run_cli("frontier", store_path, "--split", "nope")
    assert res.exit_code == 2 and res.stderr.count("\n") == 1, res.output
    assert "Traceback" not in res.output
