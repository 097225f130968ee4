"""Scores as stored: a combiner with ``scores_as_stored`` streams float16 without widening.

The store has 5 classes, 70 labelled val rows and 50 unlabelled test rows; its producers are
stored in 16- and 24-row chunks while the engine's blocks are cut to 20 rows, so a block is
put together from parts of two stored chunks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ensemble_engine import plugins
from ensemble_engine.combiner import Combiner, Output, Role
from ensemble_engine.errors import StoreError
from ensemble_engine.graph import execute, load_graph, plan
from ensemble_engine.graph import runner as graph_runner
from ensemble_engine.hookspecs import hookimpl
from ensemble_engine.plugins import PluginHost
from ensemble_engine.store import PredictionStore, open_store

K = 5
CLASSES = [f"c{i}" for i in range(K)]
SEEN: list[tuple[str, str]] = []  # (combiner, dtype of the scores its apply received)


class Seen(Combiner):
    """Records the dtype of its inputs' scores; outputs their mean probabilities."""

    roles = (Role("inputs", kinds=("logits", "probs")),)
    output_kind = "probs"

    def apply(self, inputs, rows, on_fit_split):
        for c in inputs["inputs"]:
            SEEN.append((type(self).__name__, str(c.scores.dtype)))
        return Output("probs", scores=np.mean([c.probs() for c in inputs["inputs"]], axis=0))


class SeenAsStored(Seen):
    scores_as_stored = True


class TestPlugin:
    @hookimpl
    def register_combiners(self, register):
        register("seen", Seen)
        register("seen_as_stored", SeenAsStored)


def make_store(path: Path) -> PredictionStore:
    st = open_store(path, "w")
    st.set_classes(CLASSES)
    rng = np.random.default_rng(0)
    st.add_split("val", [f"v{i}" for i in range(70)], rng.integers(0, K, 70))
    st.add_split("test", [f"t{i}" for i in range(50)])
    for i, (dtype, rows) in enumerate([("float16", 16), ("float16", 24), ("float32", 16)]):
        meta = {"source": {"type": "producer", "plugin": "test"}, "loss": "ce"}
        for split, n in (("val", 70), ("test", 50)):
            z = rng.normal(scale=3.0, size=(n, K)).astype(np.float32)
            with st.prediction_writer(
                f"m{i}", split, kind="logits", meta=meta, dtype=dtype, chunk_rows=rows
            ) as w:
                w.write(z)
    return st


def graph(tmp_path: Path, combiner: str, params: str = "{}", node: str = "out") -> Path:
    path = tmp_path / f"{node}.yaml"
    path.write_text(
        "version: 1\nfit: val\napply: [val, test]\nnodes:\n"
        f"  {node}: {{combiner: {combiner}, inputs: ['m*'], params: {params}}}\n"
        f"output: {node}\n"
    )
    return path


@pytest.fixture
def blocks_of_20(monkeypatch):
    monkeypatch.setattr(graph_runner, "chunk_rows_for", lambda k, itemsize: 20)


def test_only_a_combiner_that_asks_gets_float16(tmp_path, monkeypatch, blocks_of_20):
    host = PluginHost()
    host.add(TestPlugin(), "stored_tests", version="1.0")
    monkeypatch.setattr(plugins, "_host", host)
    st = make_store(tmp_path / "s.zarr")
    SEEN.clear()
    for name in ("seen", "seen_as_stored"):
        execute(plan(load_graph(graph(tmp_path, name, node=name)), st), st)
    # 4 + 3 blocks of 20 rows on val and test, 3 inputs each
    assert sorted(set(SEEN)) == [
        ("Seen", "float32"),
        ("SeenAsStored", "float16"),
        ("SeenAsStored", "float32"),
    ]
    assert SEEN.count(("SeenAsStored", "float16")) == 2 * 7
    assert SEEN.count(("Seen", "float32")) == 3 * 7
    # and both wrote the same probabilities: float16 widens exactly
    for split in ("val", "test"):
        np.testing.assert_array_equal(st.read("seen_as_stored", split), st.read("seen", split))


def test_soft_vote_on_float16_matches_float64_reference(tmp_path, blocks_of_20):
    st = make_store(tmp_path / "s.zarr")
    weights = "{weights: {m0: 2.0, m1: 0.5, m2: 1.0}}"
    execute(plan(load_graph(graph(tmp_path, "soft_vote", weights)), st), st)
    for split in ("val", "test"):
        want = np.zeros((st.split(split).n, K))
        for name, w in (("m0", 2.0), ("m1", 0.5), ("m2", 1.0)):
            z = st.read(name, split).astype(np.float64)  # the stored values, widened exactly
            e = np.exp(z - z.max(axis=1, keepdims=True))
            want += w / 3.5 * e / e.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(st.read("out", split), want, rtol=2e-6, atol=1e-7)


def test_a_damaged_float16_chunk_is_a_store_error(tmp_path, blocks_of_20):
    st = make_store(tmp_path / "s.zarr")
    chunk = tmp_path / "s.zarr" / "predictions" / "m1" / "test" / "scores" / "c" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:7])  # truncated
    with pytest.raises(StoreError, match="prediction m1/test is damaged"):
        execute(plan(load_graph(graph(tmp_path, "soft_vote")), st), st)
    assert not st.exists("out", "test", include_incomplete=True)


@pytest.mark.slow
def test_two_workers_write_the_bits_of_one(tmp_path, blocks_of_20):
    """Workers read float32 (widened), one process float16: the soft vote is the same."""
    outs = {}
    for workers in (1, 2):
        st = make_store(tmp_path / f"w{workers}.zarr")
        path = graph(tmp_path, "soft_vote", "{weights: softmax_score, temperature: 0.1}")
        execute(plan(load_graph(path), st), st, workers=workers)
        outs[workers] = {s: st.read("out", s) for s in ("val", "test")}
    for split in ("val", "test"):
        np.testing.assert_array_equal(outs[2][split], outs[1][split])
