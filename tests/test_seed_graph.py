"""The shipped vipriors2021 graph against a step-by-step numpy reproduction.

The synthetic store holds 15 producers (3 losses x 5 backbones), each predicting at 3 test
sizes, plus three specialists over class subsets with ``__other__``. Every producer sees the
true label with its own strength plus noise, so the softmax-score weights differ per backbone.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ensemble_engine import plugins
from ensemble_engine.combiner import OTHER
from ensemble_engine.graph import load_graph, plan
from ensemble_engine.store import PredictionStore, open_store

K = 8
CLASSES = [f"c{i}" for i in range(K)]
LOSSES = ["ce", "taylor_ce", "bi_tempered"]
BACKBONES = ["r18", "r34", "r50", "effb0", "vit"]
SIZES = [32, 46, 54]
# two specialists share a subset, so together they can outvote a third that keeps the base
SPECIALISTS = {"cov-012a": [0, 1, 2], "cov-012b": [0, 1, 2], "cov-23": [2, 3]}
N = {"val": 400, "test": 200}  # enough val rows for coverage to accept some corrections
TEMPERATURE = 1.0  # the shipped graph's soft_vote temperature


@pytest.fixture(autouse=True)
def fusion_host(monkeypatch):
    """The real fusion combiners, isolated from whatever else is installed."""
    import ee_fusion

    host = plugins.PluginHost()
    host.add(ee_fusion, "ee_fusion", version="test", builtin=True)
    monkeypatch.setattr(plugins, "_host", host)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> PredictionStore:
    rng = np.random.default_rng(2021)
    st = open_store(tmp_path_factory.mktemp("seed") / "ee.zarr", "w")
    st.set_classes(CLASSES)
    truth = {s: rng.integers(0, K, n) for s, n in N.items()}
    for split, n in N.items():
        st.add_split(split, [f"{split}{i}" for i in range(n)], truth[split])
    for b, backbone in enumerate(BACKBONES):
        for loss in LOSSES:
            for size in SIZES:
                meta = {
                    "source": {"type": "producer", "plugin": "timm"},
                    "backbone": backbone,
                    "loss": loss,
                    "test_size": size,
                }
                for split, y in truth.items():
                    logits = rng.normal(0.0, 1.5, (len(y), K))
                    logits[np.arange(len(y)), y] += 0.2 + 0.15 * b
                    st.write_prediction(
                        f"{backbone}-{loss}-{size}", split, kind="logits", scores=logits, meta=meta
                    )
    for name, subset in SPECIALISTS.items():
        classes = [CLASSES[c] for c in subset] + [OTHER]
        meta = {"source": {"type": "producer", "plugin": "timm"}, "loss": "ce", "test_size": 32}
        for split, y in truth.items():
            target = np.array([subset.index(v) if v in subset else len(subset) for v in y])
            logits = rng.normal(0.0, 1.0, (len(y), len(classes)))
            logits[np.arange(len(y)), target] += 2.0
            st.write_prediction(
                name, split, kind="logits", scores=logits, classes=classes, meta=meta
            )
    return st


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def vote(labels: list[np.ndarray], tie_scores: np.ndarray | None) -> np.ndarray:
    """Plain majority; a tie goes to the highest tie score, then to the lowest class index."""
    out = []
    for r in range(len(labels[0])):
        counts = np.bincount([lab[r] for lab in labels], minlength=K)
        tied = [c for c in range(K) if counts[c] == counts.max()]
        if tie_scores is not None:
            best = max(tie_scores[r, c] for c in tied)
            tied = [c for c in tied if tie_scores[r, c] == best]
        out.append(tied[0])
    return np.array(out)


def reproduce(st: PredictionStore) -> dict:
    """Every stage of the graph, one step at a time, from the stored arrays."""
    y_val = st.split("val").labels
    out: dict = {"weights": {}, "soft": {s: {} for s in N}, "stage2": {}, "final": {}}
    for loss in LOSSES:
        for size in SIZES:
            names = [f"{b}-{loss}-{size}" for b in BACKBONES]
            top1 = np.array([(st.read(n, "val").argmax(1) == y_val).mean() for n in names])
            w = np.exp(top1 / TEMPERATURE)
            w /= w.sum()
            out["weights"][f"soft_{loss}_{size}"] = dict(zip(names, w, strict=True))
            for split in N:
                probs = sum(
                    wi * softmax(st.read(n, split).astype(np.float64))
                    for wi, n in zip(w, names, strict=True)
                )
                out["soft"][split][f"soft_{loss}_{size}"] = probs / w.sum()
    for split in N:
        soft = out["soft"][split]
        base = vote([p.argmax(1) for p in soft.values()], np.mean(list(soft.values()), axis=0))
        out["stage2"][split] = base
        out["answers"] = out.get("answers", {})
        out["answers"][split] = {}
        for name, subset in SPECIALISTS.items():
            probs = softmax(st.read(name, split).astype(np.float64))
            said = probs.argmax(1)  # index into subset + [__other__]
            spec = np.array([subset[i] if i < len(subset) else -1 for i in said])
            out["answers"][split][name] = (spec, probs.max(1))
    return out


def covered_final(base, answers, decisions):
    """The validated policy's labels from its recorded decisions: a specialist's correction into
    class c is kept where c was accepted and its probability reaches the threshold, and the base
    lies in its subset; then a vote in which any tie at the top keeps the base."""
    covered = []
    for name, (spec, conf) in answers.items():
        subset = SPECIALISTS[name]
        keep = np.zeros(len(base), dtype=bool)
        for c in subset:
            d = decisions[name][CLASSES[c]]
            if d["accept"]:
                keep |= (spec == c) & (conf >= d["threshold"] - 1e-6)
        covered.append(np.where(keep & np.isin(base, subset), spec, base))
    out = []
    for r in range(len(base)):
        counts = np.bincount([lab[r] for lab in covered], minlength=K)
        top = np.flatnonzero(counts == counts.max())
        out.append(top[0] if len(top) == 1 else base[r])
    return np.array(out), covered


def test_seed_graph_matches_a_step_by_step_reproduction(store, run_cli):
    res = run_cli("combine", "vipriors2021", "--store", store.path, "--json")
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)
    soft_ids = sorted(f"soft_{loss}_{size}" for loss in LOSSES for size in SIZES)
    assert sorted(n["id"] for n in shown["nodes"][:-2]) == soft_ids
    assert [n["id"] for n in shown["nodes"][-2:]] == ["stage2", "final"]
    assert shown["nodes"][-1]["inputs"] == {"base": ["stage2"], "specialists": sorted(SPECIALISTS)}
    want = reproduce(open_store(store.path, "r"))
    st = open_store(store.path, "r")
    y_val = st.split("val").labels
    for node, weights in want["weights"].items():
        assert st.get(node, "val").attrs["state"]["weights"] == pytest.approx(weights, rel=1e-6)
        assert st.get(node, "val").attrs["inputs"] == sorted(weights)  # no specialist slipped in
    for split in N:
        for node, probs in want["soft"][split].items():
            np.testing.assert_allclose(st.read(node, split), probs, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(st.read("stage2", split), want["stage2"][split])
    # final: policy validated; on test its recorded decisions reproduce it, and on val (the fit
    # split, out of fold) its top-1 is the one its state records
    state = st.get("final", "test").attrs["state"]
    assert state["policy"] == "validated"
    final_test, covered = covered_final(
        want["stage2"]["test"], want["answers"]["test"], state["decisions"]
    )
    np.testing.assert_array_equal(st.read("final", "test"), final_test)
    y_test = st.split("test").labels
    assert state["covered"] == {
        name: {"top1": pytest.approx((c == y_test).mean())}
        for name, c in zip(SPECIALISTS, covered, strict=True)
    }
    val_state = st.get("final", "val").attrs["state"]
    assert (st.read("final", "val") == y_val).mean() == pytest.approx(
        val_state["fit"]["top1_out_of_fold"]
    )
    assert val_state["fit"]["top1_in_sample"] >= val_state["fit"]["base_top1"]
    # the data exercise the tie rule of stage 2, and the specialists change some labels
    labels = np.array([p.argmax(1) for p in want["soft"]["val"].values()])
    counts = np.stack([np.bincount(col, minlength=K) for col in labels.T])
    assert ((counts == counts.max(1, keepdims=True)).sum(1) > 1).sum() >= 5
    accepted = [c for d in state["decisions"].values() for c, v in d.items() if v["accept"]]
    refused = [c for d in state["decisions"].values() for c, v in d.items() if not v["accept"]]
    assert accepted and refused  # the data exercise both decisions
    final = next(n for n in shown["nodes"] if n["id"] == "final")
    assert final["metrics"]["test"]["top1"] == pytest.approx((final_test == y_test).mean())


def test_seed_graph_values_can_be_chosen(store):
    spec = load_graph("vipriors2021", {"loss": ["ce", "taylor_ce"], "size": [32]})
    p = plan(spec, store)
    assert [n.id for n in p.nodes] == ["soft_ce_32", "soft_taylor_ce_32", "stage2", "final"]
    assert p.node("soft_ce_32").inputs == sorted(f"{b}-ce-32" for b in BACKBONES)
