"""Coverage: the validated policy, one covered result per specialist model, ties to the base,
and each specialist's covered top-1 in the node's state (hand-computed values throughout)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ee_fusion.coverage import Coverage
from ee_fusion.coverage_policy import (
    Answers,
    covered_matrix,
    fit_policy,
    fit_thresholds,
    fold_ids,
)
from ee_fusion.coverage_rules import Specialist, vote_keep_base
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ensemble_engine.combiner import OTHER, ArrayInput, Output
from ensemble_engine.errors import GraphError

STORE = ["a", "b", "c", "d", "e"]
ABC = ["a", "b", "c", OTHER]


def src(id, kind, data, classes=STORE, run=None):
    return ArrayInput(id, kind, np.asarray(data), classes, meta={"run": run} if run else None)


def apply(comb: Coverage, sources: dict, on_fit_split: bool = False) -> Output:
    n = len(sources["base"][0].data)
    chunks = {role: [s.chunk(slice(0, n)) for s in items] for role, items in sources.items()}
    return comb.apply(chunks, slice(0, n), on_fit_split)


def one_hot_probs(index, width, p=0.9):
    out = np.full((len(index), width), (1 - p) / (width - 1))
    out[np.arange(len(index)), index] = p
    return out


def helps_a_hurts_b():
    """20 rows each: true a / base c / specialist a (fixes into a); true b / base b /
    specialist c (breaks b: corrections into c); true c / base c / specialist c; true d / base
    d / specialist __other__."""
    y = np.repeat([0, 1, 2, 3], 20)
    base = np.repeat([2, 1, 2, 3], 20)
    said = np.repeat([0, 2, 2, 3], 20)  # index into ABC
    return y, {
        "base": [src("base", "labels", base)],
        "specialists": [src("spec", "probs", one_hot_probs(said, 4), ABC)],
    }


def test_validated_keeps_the_helpful_class_only():
    y, inputs = helps_a_hurts_b()
    comb = Coverage({"policy": "validated"}, classes=STORE)
    assert comb.needs_fit and not Coverage({}, classes=STORE).needs_fit
    comb.fit(inputs, y)
    want = np.repeat([0, 1, 2, 3], 20)  # a fixed, b kept
    np.testing.assert_array_equal(apply(comb, inputs).labels, want)
    np.testing.assert_array_equal(apply(comb, inputs, on_fit_split=True).labels, want)  # OOF too
    gated = apply(Coverage({"policy": "base_gated"}, classes=STORE), inputs).labels
    np.testing.assert_array_equal(gated, np.repeat([0, 2, 2, 3], 20))  # b broken into c
    decisions = comb.state()["decisions"]["spec"]
    assert decisions["a"] == {
        "candidates": 20, "fixes": 20, "breaks": 0, "accept": True,
        "threshold": pytest.approx(0.9), "kept_fixes": 20, "kept_breaks": 0, "folds_accepted": 5,
    }  # fmt: skip
    assert decisions["c"]["accept"] is False
    assert (decisions["c"]["fixes"], decisions["c"]["breaks"]) == (0, 20)
    assert decisions["b"]["candidates"] == 0 and decisions["b"]["accept"] is False
    assert comb.state()["fit"] == {
        "rows": 80, "folds": 5, "base_top1": 0.75, "top1_in_sample": 1.0, "top1_out_of_fold": 1.0,
    }  # fmt: skip


def test_validated_confidence_threshold_keeps_the_sure_corrections():
    # 10 sure fixes into a (p 0.9), 6 unsure breaks into a (p 0.5): net +4 at any threshold
    # below 0.5, +10 at 0.9
    y = np.array([0] * 10 + [2] * 6 + [2] * 4)
    base = np.full(20, 2)
    probs = np.vstack([one_hot_probs([0] * 10, 4), one_hot_probs([0] * 6, 4, 0.5)])
    probs = np.vstack([probs, one_hot_probs([3] * 4, 4)])
    inputs = {"base": [src("base", "labels", base)], "specialists": [src("s", "probs", probs, ABC)]}
    comb = Coverage({"policy": "validated", "folds": 2}, classes=STORE)
    comb.fit(inputs, y)
    assert comb.state()["decisions"]["s"]["a"]["threshold"] == pytest.approx(0.9)
    np.testing.assert_array_equal(apply(comb, inputs).labels, y)
    blunt = Coverage({"policy": "validated", "folds": 2, "confidence": False}, classes=STORE)
    blunt.fit(inputs, y)
    np.testing.assert_array_equal(apply(blunt, inputs).labels, [0] * 16 + [2] * 4)


@st.composite
def random_stores(draw):
    """A fit split: base and specialists that see the truth with their own (random) strength."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n, k = draw(st.integers(20, 120)), 6
    y = rng.integers(0, k, n)
    base = np.where(rng.random(n) < draw(st.floats(0.2, 0.95)), y, rng.integers(0, k, n))
    specs, answers, conf = [], [], []
    for g in range(draw(st.integers(1, 4))):
        subset = rng.choice(k, draw(st.integers(2, 4)), replace=False)
        mask = np.zeros(k, dtype=bool)
        mask[subset] = True
        index = np.append(subset, -1)
        truth = np.where(mask[y], y, -1)
        noise = index[rng.integers(0, len(index), n)]
        answers.append(np.where(rng.random(n) < draw(st.floats(0, 1)), truth, noise))
        conf.append(rng.random(n).round(1))  # repeated values: ties in the threshold sweep
        specs.append(Specialist(f"s{g}", (f"s{g}",), index, mask))
    a = Answers(base, np.stack(answers, axis=1), np.stack(conf, axis=1), specs)
    return a, y, k


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_stores(), st.integers(1, 3), st.booleans())
def test_validated_never_below_the_base_on_the_rows_it_was_fitted_on(store, min_gain, conf):
    """The honest guarantee: decisions fitted on rows score at least the base on those rows
    (every accepted move raises the voted hits, and a net loss refuses everything). Each fold's
    decisions are such a fit on the other folds' rows."""
    a, y, k = store
    thr = fit_thresholds(a, y, min_gain, conf, k)
    voted = vote_keep_base(covered_matrix(a, thr), a.base, k)[0]
    assert (voted == y).sum() >= (a.base == y).sum()
    if (np.bincount(y, minlength=k) >= 2).all():
        fit = fit_policy(a, y, min_gain=min_gain, confidence=conf, folds=2, seed=0, k=k)
        for f, fold_thr in enumerate(fit.fold_thresholds):
            train = fit.folds != f
            part = a.take(np.flatnonzero(train))
            fold_voted = vote_keep_base(covered_matrix(part, fold_thr), part.base, k)[0]
            assert (fold_voted == y[train]).sum() >= (part.base == y[train]).sum()


def test_out_of_fold_below_the_base_refuses_covering_as_a_whole():
    """3 fixes and 2 breaks into a make a net +1 on the whole split (accepted in sample), but a
    fold holding a break and no fix is predicted by decisions (net +2 on the others) that break
    it: out of fold 9/13 against the base's 10/13 (fold seed 1 cuts the 13 rows so). Step 4
    then refuses every correction, on the fit split and on the splits it is applied to."""
    spec = Specialist("s", ("s",), np.array([0, 2, -1]), np.isin(range(5), [0, 2]))
    y = np.array([0] * 3 + [2] * 10)
    base = np.full(13, 2)
    a = Answers(base, np.array([0] * 5 + [-1] * 8)[:, None], np.ones((13, 1)), [spec])
    in_sample = fit_thresholds(a, y, 1, False, 5)
    assert np.isfinite(in_sample[0, 0])  # accepted on the whole split: 4/13 wrong → 3/13
    folds = fold_ids(y, 3, 1)
    oof = np.empty(13, dtype=np.int64)
    for f in range(3):
        train, held = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        thr = fit_thresholds(a.take(train), y[train], 1, False, 5)
        oof[held] = vote_keep_base(covered_matrix(a.take(held), thr), base[held], 5)[0]
    assert (oof == y).sum() == 9 < (base == y).sum() == 10  # the case step 4 is for

    fit = fit_policy(a, y, min_gain=1, confidence=False, folds=3, seed=1, k=5)
    assert np.isinf(fit.thresholds).all()  # nothing is covered on the other splits
    assert all(np.isinf(t).all() for t in fit.fold_thresholds)
    assert fit.oof_labels.tolist() == base.tolist()
    assert (fit.oof_covered == base[:, None]).all()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_stores(), st.integers(1, 3), st.booleans())
def test_validated_fit_split_out_of_fold_accuracy_is_never_below_the_base(store, min_gain, conf):
    """The issue's property: the fit split's (out-of-fold) output scores at least the base."""
    a, y, k = store
    if not (np.bincount(y, minlength=k) >= 2).all():
        return
    fit = fit_policy(a, y, min_gain=min_gain, confidence=conf, folds=2, seed=0, k=k)
    assert (fit.oof_labels == y).sum() >= (a.base == y).sum()


def test_specialist_sizes_are_one_voter():
    """Three sizes of one run (same ``run`` fact) average into one answer: row 0's mean
    [0.13, 0.3, 0.57] says __other__ although two sizes say c; with run r2 saying c, the vote
    is b 1 : c 1, a tie, so the base's b stays. Counted per prediction it was c 3 : b 1."""
    sub = ["b", "c", OTHER]
    sizes = [[[0.2, 0.45, 0.35]], [[0.2, 0.45, 0.35]], [[0.0, 0.0, 1.0]]]
    inputs = {
        "base": [src("base", "labels", [1])],
        "specialists": [
            *(src(f"cov-r1-s{i}", "probs", p, sub, run="r1") for i, p in enumerate(sizes)),
            src("cov-r2-s32", "probs", [[0.1, 0.9, 0.0]], sub, run="r2"),
        ],
    }
    comb = Coverage({}, classes=STORE)
    out = apply(comb, inputs)
    assert out.labels.tolist() == [1]
    assert out.votes.tolist() == [[0, 1, 1, 0, 0]]
    assert comb.state()["specialists"] == {
        "r1": ["cov-r1-s0", "cov-r1-s1", "cov-r1-s2"],
        "r2": ["cov-r2-s32"],
    }


def test_a_tie_keeps_the_base_label_when_the_base_holds_labels_only():
    inputs = {
        "base": [src("base", "labels", [1, 1, 1])],
        "specialists": [
            src("s1", "labels", [1, 1, 2], ["b", "c", OTHER]),
            src("s2", "labels", [1, 1, 1], ["b", "d", OTHER]),
        ],
    }
    # rows 0, 1: c 1 : d 1, a tie without the base → b (the lowest tied index gave c)
    # row 2: s1 __other__ keeps b, s2 d → b 1 : d 1 → b (lowest index gave b too)
    out = apply(Coverage({}, classes=STORE), inputs)
    assert out.labels.tolist() == [1, 1, 1]
    assert out.votes.tolist()[0] == [0, 0, 1, 1, 0]


def test_state_records_each_specialists_covered_top1_on_the_split():
    # base c c b b; the specialist (a, b, c) says a, __other__, c, b → covered a c c b
    inputs = {
        "base": [src("base", "labels", [2, 2, 1, 1])],
        "specialists": [src("s", "labels", [0, 3, 2, 1], ABC, run="r")],
    }
    sources = {role: list(items) for role, items in inputs.items()}
    comb = Coverage({}, classes=STORE)
    comb.observe("test", sources, np.array([0, 2, 1, 1]), on_fit_split=False)
    assert comb.state()["covered"] == {"r": {"top1": 0.75}}  # row 2 broken
    comb.observe("val", sources, np.array([0, -1, -1, 1]), on_fit_split=False)
    assert comb.state()["covered"] == {"r": {"top1": 1.0}}  # unlabelled rows left out
    comb.observe("pub", sources, np.full(4, -1), on_fit_split=False)
    assert comb.state()["covered"] == {"r": {"top1": None}}


def test_validated_covered_top1_on_the_fit_split_is_out_of_fold():
    y, inputs = helps_a_hurts_b()
    comb = Coverage({"policy": "validated"}, classes=STORE)
    comb.fit(inputs, y)
    comb.observe("val", inputs, y, on_fit_split=True)
    assert comb.state()["covered"] == {"spec": {"top1": 1.0}}
    flipped = y.copy()
    flipped[:20] = 2  # as if the base had been right there: the covered result breaks 20 rows
    comb.observe("test", inputs, flipped, on_fit_split=False)
    assert comb.state()["covered"] == {"spec": {"top1": 0.75}}


GRAPH = """version: 1
fit: val
apply: [val, test]
nodes:
  final:
    combiner: coverage
    inputs: {base: base, specialists: ["cov-*"]}
    params: {policy: base_gated}
output: final
"""


def test_combine_records_covered_top1_per_split_and_ls_shows_it(tmp_path, run_cli, monkeypatch):
    """Through ``ee combine``: one specialist run at two sizes is one voter, and the node's
    state on each split holds that split's covered top-1 (hand-computed), which ``ee ls``
    prints. base c c b b; both sizes say a, __other__, c, b → covered a c c b."""
    from ensemble_engine.store import open_store

    st = open_store(tmp_path / "s.zarr", "w")
    st.set_classes(STORE)
    truth = {"val": [0, 2, 1, 1], "test": [0, 2, 2, 1]}  # covered: val 3/4, test 4/4
    prod = {"source": {"type": "producer", "plugin": "t"}}
    for split, y in truth.items():
        st.add_split(split, [f"{split}{i}" for i in range(4)], y)
        st.write_prediction("base", split, kind="labels", labels=[2, 2, 1, 1], meta=prod)
        for size in (28, 32):
            st.write_prediction(
                f"cov-x-s{size}", split, kind="probs", scores=one_hot_probs([0, 3, 2, 1], 4),
                classes=ABC, dtype="float32", meta={**prod, "run": "cov-x-r1", "test_size": size},
            )  # fmt: skip
    (tmp_path / "g.yaml").write_text(GRAPH)
    res = run_cli("combine", tmp_path / "g.yaml", "--store", tmp_path / "s.zarr")
    assert res.exit_code == 0, res.output
    st = open_store(tmp_path / "s.zarr", "r")
    for split, top1 in (("val", 0.75), ("test", 1.0)):
        state = st.get("final", split).attrs["state"]
        assert state["covered"] == {"cov-x-r1": {"top1": top1}}
        assert state["specialists"] == {"cov-x-r1": ["cov-x-s28", "cov-x-s32"]}
        assert st.get("final", split).metrics["top1"] == top1
    assert st.read("final", "val").tolist() == [0, 2, 2, 1]
    assert st.read_votes("final", "val").sum(axis=1).tolist() == [1, 1, 1, 1]  # one voter
    res = run_cli("ls", tmp_path / "s.zarr", "--json")
    rows = {r["id"]: r for r in json.loads(res.stdout)["predictions"]}
    assert rows["final/val"]["covered"] == {"cov-x-r1": 0.75}
    assert "covered" not in rows["base/val"]
    monkeypatch.setenv("COLUMNS", "250")  # the facts column is cut at 80
    res = run_cli("ls", tmp_path / "s.zarr", "--pattern", "final")
    assert "covered cov-x-r1=1.0000" in " ".join(res.stdout.split()), res.stdout


def test_a_small_fit_split_gets_as_many_folds_as_its_commonest_class_has_rows():
    """3 rows per class (a 20% holdout of 14 images per class) cannot make 5 stratified folds:
    the policy uses 3 instead of failing the graph; 1 row per class is one line."""
    y = np.repeat(np.arange(4), 3)
    folds = fold_ids(y, 5, 0)
    assert sorted(set(folds.tolist())) == [0, 1, 2]
    for f in range(3):  # stratified: every class once in every fold
        assert sorted(y[folds == f].tolist()) == [0, 1, 2, 3]
    with pytest.raises(GraphError, match="cannot make 2 folds"):
        fold_ids(np.arange(4), 5, 0)
