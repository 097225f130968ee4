"""The built-in combiners against hand-written references, plus generic checks on the registry."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from ee_fusion.cache import FLOAT32_CACHE_LIMIT, Cache, from_bfloat16, to_bfloat16
from ee_fusion.calibration import Calibrate
from ee_fusion.coverage import Coverage
from ee_fusion.pooling import fit_pooling, label_log_probs, nll_and_grad
from ee_fusion.selection import Select
from ee_fusion.stacking import Stacking
from ee_fusion.voting import HardVote, SoftVote
from scipy.optimize import check_grad
from scipy.special import log_softmax, logsumexp
from scipy.special import softmax as sp_softmax
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from ensemble_engine.combiner import OTHER, ArrayInput, Output
from ensemble_engine.errors import GraphError
from ensemble_engine.plugins import get_host

ABC = ["a", "b", "c"]


def src(id: str, kind: str, data, classes=ABC, chunk_rows: int = 4096) -> ArrayInput:
    return ArrayInput(id, kind, np.asarray(data), classes, chunk_rows=chunk_rows)


def apply(comb, sources: dict, rows: slice | None = None, on_fit_split: bool = False) -> Output:
    n = len(next(iter(sources.values()))[0].data)
    rows = slice(0, n) if rows is None else rows
    chunks = {role: [s.chunk(rows) for s in items] for role, items in sources.items()}
    return comb.apply(chunks, rows, on_fit_split)


def ref_softmax(row) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


# --- soft vote ---------------------------------------------------------------------------------

P1 = [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.4, 0.4, 0.2]]
P2 = [[0.2, 0.5, 0.3], [0.3, 0.3, 0.4], [0.1, 0.1, 0.8]]
Z3 = [[1.0, 0.0, -1.0], [0.0, 2.0, 0.0], [3.0, 1.0, 2.0]]


def ref_soft(probs_rows: list[list[list[float]]], weights: list[float]) -> np.ndarray:
    out = []
    for r in range(len(probs_rows[0])):
        pairs = list(zip(probs_rows, weights, strict=True))
        out.append([sum(w * p[r][k] for p, w in pairs) / sum(weights) for k in range(3)])
    return np.array(out)


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ("uniform", [1, 1, 1]),
        ([2.0, 0.0, 1.0], [2, 0, 1]),
        ({"cnn-1": 3.0, "cnn-*": 1.0, "*": 0.5}, [3, 1, 0.5]),
    ],
)
def test_soft_vote_matches_weighted_mean(weights, expected):
    inputs = {
        "inputs": [src("cnn-1", "probs", P1), src("cnn-2", "probs", P2), src("vit", "logits", Z3)]
    }
    comb = SoftVote({"weights": weights}, classes=ABC)
    assert comb.needs_fit is False
    out = apply(comb, inputs)
    want = ref_soft([P1, P2, [ref_softmax(r) for r in Z3]], expected)
    assert out.kind == "probs"
    np.testing.assert_allclose(out.scores, want, atol=1e-6)
    assert comb.state()["weights"] == {
        "cnn-1": expected[0],
        "cnn-2": expected[1],
        "vit": expected[2],
    }


def test_soft_vote_softmax_score_weights():
    # 10 rows; input "six" is right on 6 rows, "seven" on 7: top-1 0.6 and 0.7.
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    onehot = np.eye(3)[labels]
    wrong = np.eye(3)[(labels + 1) % 3]
    six = np.where(np.arange(10)[:, None] < 6, onehot, wrong) * 0.8 + 0.2 / 3
    seven = np.where(np.arange(10)[:, None] < 7, onehot, wrong) * 0.8 + 0.2 / 3
    inputs = {"inputs": [src("six", "probs", six, chunk_rows=3), src("seven", "probs", seven)]}
    assert SoftVote.needs_fit is True
    # temperature 1: softmax([0.6, 0.7]) = [1/(1+e^0.1), e^0.1/(1+e^0.1)] = [0.4750208, 0.5249792]
    comb = SoftVote({"weights": "softmax_score"}, classes=ABC)
    assert comb.needs_fit is True
    comb.fit(inputs, labels)
    state = comb.state()
    assert state["scores"] == pytest.approx({"six": 0.6, "seven": 0.7})
    assert state["weights"]["six"] == pytest.approx(0.4750208, abs=1e-7)
    assert state["weights"]["seven"] == pytest.approx(0.5249792, abs=1e-7)
    out = apply(comb, inputs)
    np.testing.assert_allclose(out.scores, 0.4750208 * six + 0.5249792 * seven, atol=1e-6)
    # temperature 0.01: softmax([60, 70]) = [1/(1+e^10), ...] = [4.53979e-5, 0.99995460]
    sharp = SoftVote({"weights": "softmax_score", "temperature": 0.01}, classes=ABC)
    sharp.fit(inputs, labels)
    assert sharp.state()["weights"]["six"] == pytest.approx(4.53979e-5, rel=1e-4)
    assert sharp.state()["weights"]["seven"] == pytest.approx(0.9999546, abs=1e-7)


def test_soft_vote_weights_errors():
    inputs = {"inputs": [src("m1", "probs", P1), src("m2", "probs", P2)]}
    with pytest.raises(GraphError, match="matches no key"):
        apply(SoftVote({"weights": {"m1": 1.0}}, classes=ABC), inputs)
    with pytest.raises(GraphError, match="one per input"):
        apply(SoftVote({"weights": [1.0, 2.0, 3.0]}, classes=ABC), inputs)
    with pytest.raises(GraphError, match="fitted"):
        apply(SoftVote({"weights": "softmax_score"}, classes=ABC), inputs)


# --- hard vote ---------------------------------------------------------------------------------


def ref_hard(labels, weights, n_classes, scores=None):
    """Row by row: weighted counts, tied maxima, tie broken by summed score then lowest index."""
    out, votes = [], np.zeros((len(labels[0]), n_classes))
    for r in range(len(labels[0])):
        for lab, w in zip(labels, weights, strict=True):
            votes[r, lab[r]] += w
        top = max(votes[r])
        tied = [k for k in range(n_classes) if abs(votes[r, k] - top) < 1e-9]
        if scores is not None:
            best = max(scores[r, k] for k in tied)
            tied = [k for k in tied if scores[r, k] == best]
        out.append(tied[0])
    return np.array(out), votes


def test_hard_vote_ties_without_scores_go_to_lowest_index():
    a, b = [0, 2, 1, 2], [2, 0, 1, 1]
    inputs = {"inputs": [src("x", "labels", a), src("y", "labels", b)]}
    out = apply(HardVote({}, classes=ABC), inputs)
    assert out.kind == "labels"
    np.testing.assert_array_equal(out.labels, [0, 0, 1, 1])  # 1-1 ties → lower index
    np.testing.assert_array_equal(out.votes, [[1, 0, 1], [1, 0, 1], [0, 2, 0], [0, 1, 1]])


def test_hard_vote_ties_by_summed_probability():
    # row 0: votes a (labels input) and b (scores); tie a/b; probs of the scores input favour b.
    # row 1: votes c and a; scores sum: a 0.5, c 0.2 → a. Labels input has no scores.
    lab = [0, 2]
    probs = [[0.1, 0.6, 0.3], [0.5, 0.3, 0.2]]
    inputs = {"inputs": [src("l", "labels", lab), src("p", "probs", probs)]}
    out = apply(HardVote({}, classes=ABC), inputs)
    np.testing.assert_array_equal(out.labels, [1, 0])


def test_hard_vote_weighted_and_random_against_reference():
    rng = np.random.default_rng(3)
    n, k = 200, 4
    labs = [rng.integers(0, k, n) for _ in range(3)]
    logits = rng.normal(size=(n, k))
    classes = list("abcd")
    inputs = {
        "inputs": [src(f"l{i}", "labels", lab, classes) for i, lab in enumerate(labs)]
        + [src("s", "logits", logits, classes)]
    }
    all_labels = [*labs, logits.argmax(axis=1)]
    for weights in ([1, 1, 1, 1], [2.0, 1.0, 1.0, 0.5], [0.1, 0.2, 0.3, 0.0]):
        out = apply(HardVote({"weights": weights}, classes=classes), inputs)
        scores = sp_softmax(logits, axis=1) * weights[3]
        want, votes = ref_hard(all_labels, weights, k, scores if weights[3] else None)
        np.testing.assert_array_equal(out.labels, want)
        np.testing.assert_allclose(out.votes, votes, atol=1e-6)


# --- coverage ----------------------------------------------------------------------------------

STORE5 = ["a", "b", "c", "d", "e"]
SPEC = ["c", "b", OTHER]  # deliberately not in store order


def test_coverage_policies_with_other():
    # rows:            0    1     2    3     4     5
    base = [1, 1, 0, 0, 2, 4]  # b, b, a, a, c, e
    spec = [0, 2, 0, 2, 1, 1]  # c, OTHER, c, OTHER, b, b  (indices into SPEC)
    inputs = {
        "base": [src("base", "labels", base, STORE5)],
        "specialists": [src("spec", "labels", spec, SPEC)],
    }
    gated = apply(Coverage({}, classes=STORE5), inputs)
    first = apply(Coverage({"policy": "specialist_first"}, classes=STORE5), inputs)
    # base_gated: only rows whose base label is b or c, and only where the specialist is not OTHER
    np.testing.assert_array_equal(gated.labels, [2, 1, 0, 0, 1, 4])
    # specialist_first: every row where the specialist names b or c
    np.testing.assert_array_equal(first.labels, [2, 1, 2, 0, 1, 1])
    np.testing.assert_array_equal(gated.votes, np.eye(5)[[2, 1, 0, 0, 1, 4]])


def test_coverage_several_specialists_vote():
    base_probs = np.array(
        [[0.1, 0.5, 0.35, 0.05, 0.0], [0.6, 0.1, 0.1, 0.1, 0.1], [0.0, 0.1, 0.2, 0.3, 0.4]]
    )
    s1 = [0, 0, 0]  # says c everywhere (SPEC order)
    s2 = [2, 2, 2]  # OTHER everywhere: leaves the base as it is
    spec3 = ["d", "e", OTHER]
    s3 = [0, 1, 0]  # d, e, d
    make = lambda base: {  # noqa: E731
        "base": [base],
        "specialists": [
            src("s1", "labels", s1, SPEC),
            src("s2", "labels", s2, SPEC),
            src("s3", "labels", s3, spec3),
        ],
    }
    # specialist_first, covered per specialist (row: s1, s2, s3):
    # row 0 base b: c, b, d → 1-1-1 tie → the base's b
    # row 1 base a: c, a, e → tie → a
    # row 2 base e: c, e, d → tie → e
    out = apply(
        Coverage({"policy": "specialist_first"}, classes=STORE5),
        make(src("b", "probs", base_probs, STORE5)),
    )
    np.testing.assert_array_equal(out.labels, [1, 0, 4])
    np.testing.assert_array_equal(out.votes[0], [0, 1, 1, 1, 0])
    # labels-only base (the shipped graph's hard-voted stage 2): ties still keep the base's
    # label, as the seed keeps its fused label unless the specialists outvote it; row 2 went
    # to the lowest tied index c before
    out = apply(
        Coverage({"policy": "specialist_first"}, classes=STORE5),
        make(src("b", "labels", base_probs.argmax(axis=1), STORE5)),
    )
    np.testing.assert_array_equal(out.labels, [1, 0, 4])
    # base_gated: row 0 base b ∈ s1 → c, s2 → b, s3 (d,e) → b: votes b 2, c 1 → b
    # row 2 base e ∈ s3 → d; s1 → e; s2 → e → e
    out = apply(Coverage({}, classes=STORE5), make(src("b", "probs", base_probs, STORE5)))
    np.testing.assert_array_equal(out.labels, [1, 0, 4])
    np.testing.assert_array_equal(out.votes[2], [0, 0, 0, 1, 2])


def ref_coverage(base_labels, specs, policy):
    """Row by row: each specialist covers the base, then a vote; a tie at the top keeps the base."""
    out = []
    for r, base in enumerate(base_labels):
        answers = []
        for labels, classes in specs:
            said = classes[labels[r]]
            if said == OTHER:
                answers.append(base)
            elif policy == "specialist_first" or STORE5[base] in classes:
                answers.append(STORE5.index(said))
            else:
                answers.append(base)
        counts = {k: answers.count(k) for k in answers}
        top = [k for k in sorted(counts) if counts[k] == max(counts.values())]
        out.append(top[0] if len(top) == 1 else base)
    return out


@pytest.mark.parametrize("policy", ["base_gated", "specialist_first"])
@pytest.mark.parametrize("base_kind", ["probs", "labels"])
def test_coverage_against_reference(policy, base_kind):
    rng = np.random.default_rng(9)
    n = 300
    base_probs = sp_softmax(rng.normal(size=(n, 5)), axis=1)
    spec_classes = [["c", "b", OTHER], ["d", "e", OTHER], ["b", "d", "a", OTHER]]
    specs = [(rng.integers(0, len(c), n), c) for c in spec_classes]
    base_data = base_probs if base_kind == "probs" else base_probs.argmax(axis=1)
    inputs = {
        "base": [src("base", base_kind, base_data, STORE5)],
        "specialists": [src(f"s{i}", "labels", lab, c) for i, (lab, c) in enumerate(specs)],
    }
    out = apply(Coverage({"policy": policy}, classes=STORE5), inputs)
    want = ref_coverage(base_probs.argmax(axis=1), specs, policy)
    np.testing.assert_array_equal(out.labels, want)
    assert out.votes.sum(axis=1).tolist() == [3.0] * n


def test_coverage_refuses_unknown_specialist_classes():
    inputs = {
        "base": [src("base", "labels", [0, 1], STORE5)],
        "specialists": [src("spec", "labels", [0, 1], ["z", OTHER])],
    }
    with pytest.raises(GraphError, match="lacks"):
        apply(Coverage({}, classes=STORE5), inputs)


# --- stacking ----------------------------------------------------------------------------------


def noisy_task(n: int, k: int, n_noise: int, signal: float, seed: int):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    good = rng.normal(size=(n, k)) + signal * np.eye(k)[y]
    noise = [rng.normal(size=(n, k)) * 2 for _ in range(n_noise)]
    return y, [good, *noise]


def test_stacking_out_of_fold_is_honest():
    k, classes = 3, ABC
    y, arrays = noisy_task(800, k, 15, 1.0, seed=1)
    fit_n = 120
    fit_src = {
        "inputs": [src(f"m{i}", "logits", a[:fit_n], chunk_rows=50) for i, a in enumerate(arrays)]
    }
    held = {"inputs": [src(f"m{i}", "logits", a[fit_n:]) for i, a in enumerate(arrays)]}
    comb = Stacking({"meta": "logreg", "C": 1e4}, classes=classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        comb.fit(fit_src, y[:fit_n])
    acc = lambda out, labels: float((out.scores.argmax(axis=1) == labels).mean())  # noqa: E731
    in_sample = acc(apply(comb, fit_src, on_fit_split=False), y[:fit_n])
    oof = acc(apply(comb, fit_src, on_fit_split=True), y[:fit_n])
    held_out = acc(apply(comb, held), y[fit_n:])
    assert in_sample > 0.95  # 48 features, 120 rows: the meta-learner memorises
    assert oof < in_sample - 0.25
    assert abs(oof - held_out) < 0.12


def test_stacking_oof_rows_come_from_models_fitted_without_them():
    y, arrays = noisy_task(90, 3, 2, 1.5, seed=2)
    inputs = {"inputs": [src(f"m{i}", "logits", a, chunk_rows=20) for i, a in enumerate(arrays)]}
    comb = Stacking({"meta": "logreg", "C": 0.5, "folds": 3, "seed": 7}, classes=ABC)
    comb.fit(inputs, y)
    oof = apply(comb, inputs, on_fit_split=True).scores
    x = np.concatenate([log_softmax(a, axis=1) for a in arrays], axis=1)
    splitter = StratifiedKFold(n_splits=3, shuffle=True, random_state=7)
    for train, held in splitter.split(x, y):
        ref = LogisticRegression(C=0.5, max_iter=1000).fit(x[train], y[train])
        np.testing.assert_allclose(oof[held], ref.predict_proba(x[held]), atol=2e-3)


@pytest.mark.parametrize("limit", [FLOAT32_CACHE_LIMIT, 0])  # float32, then bfloat16 cache
def test_stacking_weights_prefers_the_informative_input(limit):
    y, (good, noise) = noisy_task(600, 4, 1, 2.0, seed=4)
    classes = list("abcd")
    inputs = {
        "inputs": [src("good", "logits", good, classes), src("noise", "logits", noise, classes)]
    }
    comb = Stacking({}, classes=classes)
    comb.cache_limit = limit
    comb.fit(inputs, y)
    state = comb.state()
    assert state["weights"]["good"] > 0.9 > 0.1 > state["weights"]["noise"]
    # output is softmax(Σ w_i log p_i / T), computed here from the reported weights
    lp = [log_softmax(good, axis=1), log_softmax(noise, axis=1)]
    z = (state["weights"]["good"] * lp[0] + state["weights"]["noise"] * lp[1]) / state[
        "temperature"
    ]
    np.testing.assert_allclose(apply(comb, inputs).scores, sp_softmax(z, axis=1), atol=1e-5)


@pytest.mark.parametrize("limit", [FLOAT32_CACHE_LIMIT, 0])  # float32, then bfloat16 storage
def test_pooling_objective_and_gradient(limit):
    y, arrays = noisy_task(50, 5, 2, 1.0, seed=5)
    lp = np.stack([log_softmax(a, axis=1) for a in arrays], axis=1)  # [rows, inputs, classes]
    cache = Cache.of(lp.astype(np.float32), limit)
    assert cache.compact == (limit == 0)
    stored = cache.get(slice(None)).astype(np.float64)
    np.testing.assert_allclose(stored, lp, rtol=2**-8, atol=1e-6)  # bfloat16: 8-bit mantissa
    label_lp = label_log_probs(cache, y)
    a = np.array([0.7, 0.2, 0.4])
    spans = [(0, 20), (35, 50)]
    rows = np.r_[0:20, 35:50]
    z = np.einsum("i,nik->nk", a, stored[rows])
    want = float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(rows)), y[rows]]))
    assert nll_and_grad(a, cache, label_lp, spans)[0] == pytest.approx(want, rel=1e-5)
    err = check_grad(
        lambda v: nll_and_grad(v, cache, label_lp, spans)[0],
        lambda v: nll_and_grad(v, cache, label_lp, spans)[1],
        a,
        epsilon=1e-4,
    )
    assert err < 1e-3
    fitted = fit_pooling(cache, y)
    best = nll_and_grad(fitted, cache, label_lp)[0]
    for step in np.eye(3) * 0.05:  # a convex minimum: no nearby feasible point does better
        assert best <= nll_and_grad(fitted + step, cache, label_lp)[0] + 1e-7
        if (fitted - step).min() >= 0:
            assert best <= nll_and_grad(fitted - step, cache, label_lp)[0] + 1e-7


def test_bfloat16_round_trip():
    x = np.array([1.0, -0.5, 3.14159, -29.9, 1e-3], dtype=np.float32)
    back = from_bfloat16(to_bfloat16(x))
    np.testing.assert_allclose(back, x, rtol=2**-8)
    np.testing.assert_array_equal(from_bfloat16(to_bfloat16(back)), back)  # exact once rounded


# --- ensemble selection ------------------------------------------------------------------------


def ref_select(probs, y, size):
    """Caruana's loop written plainly: accuracy, then NLL (equal within 1e-6), then the earliest
    input; keep the shortest prefix with the best score."""
    chosen, best_prefix = [], (0, None)

    def beats(new, old):
        return old is None or new[0] > old[0] or (new[0] == old[0] and new[1] < old[1] - 1e-6)

    for _ in range(size):
        best = None
        for i in range(len(probs)):
            mean = sum(probs[j] for j in [*chosen, i]) / (len(chosen) + 1)
            hits = int(np.sum(mean.argmax(axis=1) == y))
            nll = -np.mean(np.log(np.maximum(mean[np.arange(len(y)), y], 1e-7)))
            if best is None or beats((hits, nll), best[0]):
                best = ((hits, nll), i)
        chosen.append(best[1])
        if beats(best[0], best_prefix[1]):
            best_prefix = (len(chosen), best[0])
    return np.bincount(chosen[: best_prefix[0]], minlength=len(probs))


def test_select_picks_good_inputs_with_counts_as_weights():
    y, arrays = noisy_task(300, 4, 2, 1.2, seed=6)
    rng = np.random.default_rng(0)
    arrays.insert(1, rng.normal(size=arrays[0].shape) + 1.0 * np.eye(4)[y])  # a second good one
    probs = [sp_softmax(a, axis=1) for a in arrays]
    classes = list("abcd")
    inputs = {"inputs": [src(f"m{i}", "probs", p, classes) for i, p in enumerate(probs)]}
    comb = Select({"size": 10}, classes=classes)
    comb.fit(inputs, y)
    counts = ref_select(probs, y, 10)
    weights = comb.state()["weights"]
    assert [weights[f"m{i}"] for i in range(4)] == counts.tolist()
    assert weights["m0"] > 0 and weights["m1"] > 0 and weights["m2"] == weights["m3"] == 0
    want = sum(c * p for c, p in zip(counts, probs, strict=True)) / counts.sum()
    np.testing.assert_allclose(apply(comb, inputs).scores, want, atol=1e-6)


def test_select_bags_are_seeded_and_summed():
    y, arrays = noisy_task(200, 3, 3, 1.5, seed=8)
    inputs = {"inputs": [src(f"m{i}", "logits", a) for i, a in enumerate(arrays)]}
    runs = []
    for seed in (0, 0):
        comb = Select({"size": 5, "bags": 6, "seed": seed}, classes=ABC)
        comb.fit(inputs, y)
        runs.append(comb.state()["weights"])
    assert runs[0] == runs[1]
    assert 6 <= sum(runs[0].values()) <= 30  # each bag keeps a prefix of 1..5 picks


# --- calibration -------------------------------------------------------------------------------


def test_calibrate_recovers_a_known_temperature():
    rng = np.random.default_rng(11)
    true_logits = rng.normal(size=(20000, 5)) * 1.5
    probs = sp_softmax(true_logits, axis=1)
    labels = (probs.cumsum(axis=1) > rng.random((20000, 1))).argmax(axis=1)
    classes = list("abcde")
    inputs = {"inputs": [src("over", "logits", true_logits * 3, classes, chunk_rows=5000)]}
    comb = Calibrate({}, classes=classes)
    comb.fit(inputs, labels)
    t = comb.state()["temperature"]
    assert t == pytest.approx(3.0, rel=0.05)
    grid = np.linspace(2.0, 4.0, 201)  # the NLL minimum by brute force agrees
    nll = [
        np.mean(
            logsumexp(true_logits * 3 / g, axis=1) - true_logits[np.arange(20000), labels] * 3 / g
        )
        for g in grid
    ]
    assert t == pytest.approx(grid[int(np.argmin(nll))], abs=0.011)
    out = apply(comb, inputs)
    assert out.kind == "logits"
    np.testing.assert_allclose(out.scores, true_logits * 3 / t, rtol=1e-5, atol=1e-5)
    assert comb.state()["nll_after"] < comb.state()["nll_before"]


# --- every registered combiner -----------------------------------------------------------------

COMBINERS = sorted(e.name for e in get_host().combiners)
CLASSES4 = list("abcd")


def generic_inputs(cls, n: int, labels: np.ndarray, seed: int, chunk_rows: int = 7) -> dict:
    rng = np.random.default_rng(seed)
    inputs = {}
    for role in cls.roles:
        kind = "logits" if "logits" in role.kinds else role.kinds[0]
        classes = [CLASSES4[1], CLASSES4[2], OTHER] if role.subset_ok else CLASSES4
        count = 2 if role.subset_ok else (3 if role.many else 1)
        items = []
        for i in range(count):
            target = labels if not role.subset_ok else np.where(labels % 3 < 2, labels % 3, 2)
            data = rng.normal(size=(n, len(classes))) + 2.0 * np.eye(len(classes))[target]
            if kind == "labels":
                data = data.argmax(axis=1)
            elif kind == "probs":
                data = sp_softmax(data, axis=1)
            items.append(src(f"{role.name}-{i}", kind, data, classes, chunk_rows))
        inputs[role.name] = items
    return inputs


def fitted(name: str, n_fit: int = 60):
    cls = get_host().combiners.get(name).factory
    labels = np.random.default_rng(1).integers(0, 4, n_fit)
    fit_inputs = generic_inputs(cls, n_fit, labels, seed=2)
    comb = cls({}, classes=CLASSES4)
    comb.fit(fit_inputs, labels)
    return comb, fit_inputs


def assert_same_output(a: Output, b: Output) -> None:
    assert a.kind == b.kind
    for field in ("scores", "labels", "votes"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None) == (y is None), field
        if x is not None:
            np.testing.assert_allclose(x, y, atol=1e-6, err_msg=field)


@pytest.mark.parametrize("name", COMBINERS)
@pytest.mark.parametrize("on_fit_split", [True, False])
def test_apply_in_chunks_equals_apply_whole(name, on_fit_split):
    comb, fit_inputs = fitted(name)
    if on_fit_split:
        inputs = fit_inputs
    else:
        inputs = generic_inputs(type(comb), 45, np.arange(45) % 4, seed=3)
    n = len(next(iter(inputs.values()))[0].data)
    whole = apply(comb, inputs, on_fit_split=on_fit_split)
    parts = [apply(comb, inputs, slice(s, min(s + 7, n)), on_fit_split) for s in range(0, n, 7)]
    joined = Output(
        parts[0].kind,
        *(
            None if getattr(parts[0], f) is None else np.concatenate([getattr(p, f) for p in parts])
            for f in ("scores", "labels", "votes")
        ),
    )
    assert_same_output(whole, joined)
    assert whole.kind == type(comb).output_kind  # the engine checks the declared kind
    if whole.kind == "probs":
        assert whole.scores.shape == (n, 4)
        np.testing.assert_allclose(whole.scores.sum(axis=1), 1.0, atol=1e-5)
    if whole.kind == "labels":
        assert whole.labels.shape == (n,) and whole.labels.min() >= 0 and whole.labels.max() < 4


@pytest.mark.parametrize("name", COMBINERS)
def test_unknown_param_is_a_graph_error(name):
    cls = get_host().combiners.get(name).factory
    with pytest.raises(GraphError, match="no_such_param"):
        cls({"no_such_param": 1}, classes=CLASSES4)


@pytest.mark.parametrize(
    ("cls", "params"),
    [
        (SoftVote, {"temperature": -1.0}),
        (SoftVote, {"weights": "best"}),
        (HardVote, {"weights": "softmax_score"}),
        (HardVote, {"weights": [1.0, -2.0]}),
        (Stacking, {"folds": 1}),
        (Stacking, {"meta": "forest"}),
        (Select, {"metric": "f1"}),
        (Coverage, {"policy": "always"}),
        (Calibrate, {"output": "probs"}),
    ],
)
def test_bad_param_values_are_graph_errors(cls, params):
    with pytest.raises(GraphError):
        cls(params, classes=CLASSES4)


@pytest.mark.parametrize("name", COMBINERS)
def test_inputs_over_other_classes_are_refused(name):
    cls = get_host().combiners.get(name).factory
    labels = np.arange(40) % 4
    inputs = generic_inputs(cls, 40, labels, seed=4)
    role = next(r for r in cls.roles if not r.subset_ok)
    inputs[role.name][0].classes = list("dcba")
    comb = cls({}, classes=CLASSES4)
    with pytest.raises(GraphError, match="differ from the store"):
        comb.fit(inputs, labels)
        apply(comb, inputs)
