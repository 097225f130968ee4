"""Ensemble selection under a cost budget (issue 21, item 2): never over budget, unknown cost
refused, at least the best single model's accuracy at its cost, out of fold on the fit split."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ee_fusion.budget import Budget, CostModel, fold_ids, input_cost
from ee_fusion.selection import Select, ensemble_selection
from ee_fusion.voting import SoftVote
from ee_report.frontier import gflops_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ensemble_engine.combiner import ArrayInput, softmax
from ensemble_engine.errors import GraphError
from ensemble_engine.graph import execute, load_graph, plan
from ensemble_engine.store import open_store

K = 4
CLASSES = list("abcd")


def confident(y: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Probs [n, K]: 0.9 on the label where ``right``, else 0.6 on the next class."""
    n = len(y)
    p = np.full((n, K), 0.1 / 3)
    p[np.arange(n), y] = 0.9
    wrong = np.full((n, K), 0.4 / 3)
    wrong[np.arange(n), (y + 1) % K] = 0.6
    return np.where(right[:, None], p, wrong).astype(np.float32)


def cost(gflops: float, ips: float, members: list[str]) -> dict:
    return {
        "gflops": gflops,
        "params": 1000,
        "views": 1,
        "images_per_s": ips,
        "device": "cpu",
        "members": members,
    }


def models(n: int) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, dict | None]]]:
    """Big (80 %, 10 GFLOPs), two cheap complementary ones (60 % each, 2 GFLOPs, together
    100 %) and a perfect one of unknown cost."""
    r = np.arange(n)
    y = r % K
    return y, {
        "big": (confident(y, r % 5 != 0), cost(10.0, 100.0, ["big"])),
        "cheap1": (confident(y, r % 10 <= 5), cost(2.0, 500.0, ["cheap1"])),
        "cheap2": (confident(y, r % 10 >= 4), cost(2.0, 500.0, ["cheap2"])),
        "oracle": (confident(y, r >= 0), None),
    }


def inputs(n: int = 200) -> tuple[np.ndarray, dict[str, list[ArrayInput]]]:
    y, ms = models(n)
    srcs = [
        ArrayInput(name, "probs", p, CLASSES, meta={} if c is None else {"cost": c})
        for name, (p, c) in ms.items()
    ]
    return y, {"inputs": srcs}


def accuracy(comb: Select, srcs: dict, y: np.ndarray) -> float:
    chunks = {"inputs": [s.chunk(slice(0, len(y))) for s in srcs["inputs"]]}
    out = comb.apply(chunks, slice(0, len(y)), on_fit_split=False)
    return float((out.scores.argmax(axis=1) == y).mean())


def test_unknown_cost_is_not_free():
    y, srcs = inputs()
    free = Select({"size": 5}, classes=CLASSES)
    free.fit(srcs, y)
    assert free.state()["chosen"] == {"oracle": 1}  # no budget: the best one, cost unknown
    assert free.state()["cost"]["gflops"] is None
    assert free.state()["cost"]["unknown"] == ["oracle"]
    comb = Select({"size": 5, "budget": {"gflops": 10}}, classes=CLASSES)
    comb.fit(srcs, y)
    state = comb.state()
    assert state["refused"] == ["oracle"] and state["weights"]["oracle"] == 0
    assert state["chosen"] == {"big": 1}


@pytest.mark.parametrize(
    ("budget", "strategy", "chosen", "acc"),
    [
        ({"gflops": 10}, "greedy", {"big": 1}, 0.8),
        ({"gflops": 10}, "gain_per_cost", {"cheap1": 1, "cheap2": 1}, 1.0),
        ({"images_per_s": 100}, "greedy", {"big": 1}, 0.8),
        ({"images_per_s": 100}, "gain_per_cost", {"cheap1": 1, "cheap2": 1}, 1.0),
        ({"gflops": 3}, "greedy", {"cheap1": 1}, 0.6),
    ],
)
def test_budget_equal_to_the_best_models_cost_keeps_its_accuracy(budget, strategy, chosen, acc):
    y, srcs = inputs()
    comb = Select({"size": 6, "budget": budget, "strategy": strategy}, classes=CLASSES)
    comb.fit(srcs, y)
    state = comb.state()
    assert state["chosen"] == chosen
    assert accuracy(comb, srcs, y) == pytest.approx(acc)
    gflops = sum({"big": 10.0, "cheap1": 2.0, "cheap2": 2.0}[m] for m in chosen)
    assert state["cost"]["gflops"] == gflops
    assert state["cost"]["members"] == sorted(chosen)
    ips = 1 / sum({"big": 0.01, "cheap1": 0.002, "cheap2": 0.002}[m] for m in chosen)
    assert state["cost"]["images_per_s"] == pytest.approx(ips)
    assert state["budget"] == budget and state["strategy"] == strategy


def test_nothing_of_known_cost_or_nothing_within_budget_is_one_line():
    y, srcs = inputs()
    only_oracle = {"inputs": [s for s in srcs["inputs"] if s.id == "oracle"]}
    comb = Select({"budget": {"gflops": 10}}, classes=CLASSES)
    with pytest.raises(GraphError, match=r"no input has a known cost \(gflops\).*oracle") as exc:
        comb.fit(only_oracle, y)
    assert "\n" not in str(exc.value)
    comb = Select({"budget": {"gflops": 1}}, classes=CLASSES)
    with pytest.raises(GraphError, match="no input fits within budget") as exc:
        comb.fit(srcs, y)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"budget": {"gflops": -1}}, "budget: gflops -1 must be a positive number"),
        ({"budget": {"gflops": 1, "images_per_s": 2}}, "give one of gflops or images_per_s"),
        ({"budget": {"flops": 1}}, "budget: unknown key 'flops'"),
        ({"budget": {}}, "budget: give one of gflops or images_per_s"),
        ({"budget": {"gflops": "x"}}, "budget/gflops: 'x' is not of type 'number'"),
        ({"strategy": "cheapest"}, "strategy: 'cheapest' is not one of"),
        ({"folds": 1}, "folds: 1 holds nothing out"),
    ],
)
def test_bad_params(params, message):
    with pytest.raises(GraphError, match=message.replace("(", r"\(")):
        Select(params, classes=CLASSES)


def test_fit_split_output_is_out_of_fold():
    rng = np.random.default_rng(3)
    n = 120
    y = rng.integers(0, K, n)
    srcs = []
    for i in range(5):
        z = rng.normal(size=(n, K)) * 2
        z[np.arange(n), y] += 1.0 + 0.3 * i
        c = cost(1.0 + i, 100.0, [f"m{i}"])
        srcs.append(ArrayInput(f"m{i}", "logits", z, CLASSES, meta={"cost": c}))
    params = {"size": 8, "budget": {"gflops": 7}, "folds": 3, "seed": 1}
    comb = Select(params, classes=CLASSES)
    comb.fit({"inputs": srcs}, y)
    assert comb.state()["folds"] == 3
    chunks = {"inputs": [s.chunk(slice(0, n)) for s in srcs]}
    oof = comb.apply(chunks, slice(0, n), on_fit_split=True).scores
    in_sample = comb.apply(chunks, slice(0, n), on_fit_split=False).scores
    # by hand: each fold's rows from the mean of a selection made on the other folds
    probs = np.stack([softmax(s.data) for s in srcs])
    folds = fold_ids(y, 3, 1)
    want = np.empty((n, K), dtype=np.float32)
    budget = Budget(CostModel([input_cost(s) for s in srcs], "gflops"), 7.0)
    for f in range(3):
        train, held = folds != f, folds == f
        counts = ensemble_selection(probs[:, train], y[train], 8, budget=budget)
        assert sum(1.0 + i for i in np.flatnonzero(counts)) <= 7
        want[held] = np.tensordot(counts, probs[:, held], 1) / counts.sum()
    np.testing.assert_allclose(oof, want, atol=1e-5)
    assert not np.allclose(oof, in_sample, atol=1e-4)  # the folds chose differently somewhere


def test_fit_split_stays_in_sample_without_a_budget():
    y, srcs = inputs()
    comb = Select({"size": 3}, classes=CLASSES)
    comb.fit(srcs, y)
    assert "folds" not in comb.state() and comb.fold_of is None


# --- property: a budgeted selection never exceeds its budget ------------------------------------


@st.composite
def budgeted_stores(draw):
    n = draw(st.integers(12, 40))
    n_producers = draw(st.integers(1, 5))
    gflops = [draw(st.floats(0.1, 50, allow_nan=False)) for _ in range(n_producers)]
    ips = [draw(st.floats(1, 1000, allow_nan=False)) for _ in range(n_producers)]
    known = [draw(st.booleans()) or i == 0 for i in range(n_producers)]
    inputs = []  # (members, has cost attr)
    for i in range(n_producers):
        inputs.append(([i], known[i]))
    for _ in range(draw(st.integers(0, 3))):  # fused inputs over some producers
        members = sorted(draw(st.sets(st.integers(0, n_producers - 1), min_size=1, max_size=3)))
        inputs.append((members, all(known[m] for m in members)))
    key = draw(st.sampled_from(["gflops", "images_per_s"]))
    limit = draw(st.floats(0.05, 120)) if key == "gflops" else draw(st.floats(0.5, 2000))
    params = {
        "size": draw(st.integers(1, 6)),
        "budget": {key: limit},
        "strategy": draw(st.sampled_from(["greedy", "gain_per_cost"])),
        "bags": draw(st.sampled_from([0, 0, 3])),
        "metric": draw(st.sampled_from(["accuracy", "nll"])),
        "folds": draw(st.sampled_from([0, 2])),
        "seed": draw(st.integers(0, 3)),
    }
    seed = draw(st.integers(0, 2**16))
    return n, gflops, ips, inputs, params, seed


def true_cost(chosen, inputs, gflops, ips, key) -> float:
    producers = sorted({m for i in chosen for m in inputs[i][0]})
    if key == "gflops":
        return math.fsum(gflops[p] for p in producers)
    return math.fsum(1 / ips[p] for p in producers)


def within(chosen, inputs, gflops, ips, budget) -> bool:
    ((key, limit),) = budget.items()
    spent = true_cost(chosen, inputs, gflops, ips, key)
    return spent <= limit if key == "gflops" else spent <= (1 / limit) * (1 + 1e-12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(budgeted_stores())
def test_budgeted_selection_never_exceeds_its_budget(case):
    n, gflops, ips, spec, params, seed = case
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    srcs = []
    for i, (members, has_cost) in enumerate(spec):
        meta = {}
        if has_cost:
            g = math.fsum(gflops[m] for m in members)
            t = 1 / math.fsum(1 / ips[m] for m in members)
            meta = {"cost": cost(g, t, [f"p{m}" for m in members])}
        z = rng.normal(size=(n, 3))
        srcs.append(ArrayInput(f"in{i}", "logits", z, list("abc"), meta=meta))
    comb = Select(params, classes=list("abc"))
    known = [i for i, (_, has) in enumerate(spec) if has]
    fits_alone = [i for i in known if within([i], spec, gflops, ips, params["budget"])]
    if not fits_alone:
        with pytest.raises(GraphError):
            comb.fit({"inputs": srcs}, y)
        return
    comb.fit({"inputs": srcs}, y)
    state = comb.state()
    chosen = [i for i in range(len(srcs)) if state["weights"][f"in{i}"] > 0]
    assert chosen and set(chosen) <= set(known)
    assert within(chosen, spec, gflops, ips, params["budget"])
    for fold in comb.fold_weights:
        assert within(
            [i for i in range(len(srcs)) if fold[f"in{i}"]], spec, gflops, ips, params["budget"]
        )
    key, limit = next(iter(params["budget"].items()))
    if key == "gflops":
        assert state["cost"]["gflops"] <= limit


# --- end to end through a graph on a store ------------------------------------------------------

GRAPH = """\
version: 1
fit: val
apply: [val, test]
nodes:
  budgeted:
    combiner: select
    inputs: [big, cheap1, cheap2, oracle]
    params: {size: 6, budget: {gflops: 10}, strategy: STRATEGY}
output: budgeted
"""


@pytest.mark.parametrize(
    ("strategy", "chosen", "gflops", "top1"),
    [("greedy", {"big": 1}, 10.0, 0.8), ("gain_per_cost", {"cheap1": 1, "cheap2": 1}, 4.0, 1.0)],
)
def test_budgeted_select_in_a_graph(tmp_path, strategy, chosen, gflops, top1):
    """The budget is the best single model's cost: at least its accuracy, at most its cost."""
    st_ = open_store(tmp_path / "s.zarr", "w")
    st_.set_classes(CLASSES)
    y, ms = models(100)
    st_.add_split("val", [f"v{i}" for i in range(100)], y)
    st_.add_split("test", [f"t{i}" for i in range(100)], y)
    for name, (p, c) in ms.items():
        meta = {"source": {"type": "producer", "plugin": "test"}}
        if c is not None:
            meta["cost"] = c
        for split in ("val", "test"):
            st_.write_prediction(name, split, kind="probs", scores=p, meta=meta)
    (tmp_path / "g.yaml").write_text(GRAPH.replace("STRATEGY", strategy))
    store = open_store(tmp_path / "s.zarr", "a")
    (result,) = execute(plan(load_graph(tmp_path / "g.yaml"), store), store)
    assert result.state["chosen"] == chosen
    assert result.state["refused"] == ["oracle"] and result.state["folds"] == 5
    assert result.state["cost"]["gflops"] == gflops <= 10.0
    assert result.metrics["test"]["top1"] == top1
    assert result.metrics["test"]["top1"] >= store.get("big", "test").metrics["top1"]
    # on the frontier at the cost of what it chose, whatever it read
    assert gflops_of(store.get("budgeted", "test").attrs) == gflops
    # and its cost attr is what it chose, not every input it read (one of which has no cost)
    cost = store.get("budgeted", "test").attrs["cost"]
    assert cost["gflops"] == pytest.approx(gflops) and "unknown" not in cost
    assert sorted(cost["members"]) == sorted(chosen)


# --- soft_vote over a pool under a budget -------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "weights"),
    [
        ({"budget": {"gflops": 10}}, {"big": 1.0, "cheap1": 0.0, "cheap2": 0.0, "oracle": 0.0}),
        (
            {"budget": {"gflops": 10}, "strategy": "gain_per_cost"},
            {"big": 0.0, "cheap1": 1.0, "cheap2": 1.0, "oracle": 0.0},
        ),
        (
            {"budget": {"gflops": 4}, "weights": {"cheap1": 3.0, "*": 1.0}},
            {"big": 0.0, "cheap1": 3.0, "cheap2": 1.0, "oracle": 0.0},
        ),
    ],
)
def test_soft_vote_chooses_its_pool_within_the_budget(params, weights):
    y, srcs = inputs()
    comb = SoftVote(params, classes=CLASSES)
    assert comb.needs_fit
    comb.fit(srcs, y)
    state = comb.state()
    assert state["weights"] == weights
    assert state["refused"] == ["oracle"]
    chosen = sorted(k for k, w in weights.items() if w > 0)
    assert state["chosen"] == chosen and state["cost"]["members"] == chosen
    assert state["cost"]["gflops"] <= params["budget"]["gflops"]
    chunks = {"inputs": [s.chunk(slice(0, len(y))) for s in srcs["inputs"]]}
    got = comb.apply(chunks, slice(0, len(y)), on_fit_split=False).scores
    probs = {s.id: s.data for s in srcs["inputs"]}
    want = sum(w * probs[k] for k, w in weights.items()) / sum(weights.values())
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_soft_vote_softmax_score_over_the_chosen_only():
    y, srcs = inputs()
    params = {"weights": "softmax_score", "budget": {"gflops": 4}, "strategy": "gain_per_cost"}
    comb = SoftVote(params, classes=CLASSES)
    comb.fit(srcs, y)
    assert set(comb.state()["weights"]) == {"cheap1", "cheap2"}
    chunks = {"inputs": [s.chunk(slice(0, len(y))) for s in srcs["inputs"]]}
    got = comb.apply(chunks, slice(0, len(y)), on_fit_split=False).scores
    assert (got.argmax(axis=1) == y).mean() == 1.0
    with pytest.raises(GraphError, match="budget: unknown key 'cost'"):
        SoftVote({"budget": {"cost": 1}}, classes=CLASSES)
