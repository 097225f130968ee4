"""The soft vote's inner loop, ``weighted_mean_probs``, against a float64 numpy reference."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from ee_fusion import mean_probs
from ee_fusion.mean_probs import weighted_mean_probs
from ee_fusion.voting import SoftVote

from ensemble_engine.combiner import InputChunk
from ensemble_engine.errors import GraphError

K = 37  # not a multiple of any vector width, so every row has a remainder


def chunk(id: str, kind: str, scores: np.ndarray) -> InputChunk:
    return InputChunk(id, kind, [f"c{k}" for k in range(scores.shape[1])], {}, scores=scores)


def reference(inputs: list[tuple[str, np.ndarray]], weights: list[float]) -> np.ndarray:
    """Σ w_i p_i / Σ w_i in float64, written out plainly: softmax of logits, probs as given."""
    total = np.zeros(inputs[0][1].shape, dtype=np.float64)
    for (kind, scores), w in zip(inputs, weights, strict=True):
        x = scores.astype(np.float64)
        if kind == "logits":
            e = np.exp(x - x.max(axis=1, keepdims=True))
            x = e / e.sum(axis=1, keepdims=True)
        total += w * x
    return total / sum(weights)


def random_inputs(n: int, dtype: type, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Three logits inputs (one with a row of large logits) and one probs input."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(3):
        z = rng.normal(scale=3.0, size=(n, K))
        z[0] += 40.0 * i  # exp would overflow float32 without the max subtraction
        out.append(("logits", z.astype(dtype)))
    p = rng.random((n, K))
    out.append(("probs", (p / p.sum(axis=1, keepdims=True)).astype(dtype)))
    return out


@pytest.fixture
def small_pieces(monkeypatch):
    """Pieces of 8 rows, so a few dozen rows already run as several pieces on the pool."""
    monkeypatch.setattr(mean_probs, "PIECE_BYTES", 8 * 4 * K)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_matches_float64_reference(dtype, small_pieces):
    inputs = random_inputs(61, dtype)
    weights = [2.0, 0.5, 0.0, 1.5]  # the third input has weight 0 and is left out
    got = weighted_mean_probs([chunk(f"m{i}", k, s) for i, (k, s) in enumerate(inputs)], weights)
    assert got.dtype == np.float32 and got.shape == (61, K)
    np.testing.assert_allclose(got, reference(inputs, weights), rtol=2e-6, atol=1e-7)


def test_one_input_gives_its_own_probabilities():
    # logits [0, ln 3]: softmax = [1/4, 3/4] exactly; a weight of 5 divides out
    z = np.array([[0.0, np.log(3.0)], [2.0, 2.0]], dtype=np.float32)
    z.flags.writeable = False  # read-only scores are read, never written (and draw no warning)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = weighted_mean_probs([chunk("m", "logits", z)], [5.0])
    np.testing.assert_allclose(got, [[0.25, 0.75], [0.5, 0.5]], rtol=1e-6)


def test_threads_float16_and_row_cuts_do_not_change_a_bit(small_pieces):
    inputs = random_inputs(90, np.float16, seed=1)
    weights = [0.3, 1.0, 2.0, 0.7]

    def mean(rows: slice, widen: bool = False) -> np.ndarray:
        chunks = [
            chunk(f"m{i}", kind, (s.astype(np.float32) if widen else s)[rows])
            for i, (kind, s) in enumerate(inputs)
        ]
        return weighted_mean_probs(chunks, weights)

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = mean(slice(0, 90))
        torch.set_num_threads(2)
        two = mean(slice(0, 90))
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before  # the kernel restores the setting it changes
    np.testing.assert_array_equal(two, one)
    # float16 read as stored gives the bits of the same values widened first (as worker
    # processes read them), and cutting the rows into blocks changes nothing
    np.testing.assert_array_equal(mean(slice(0, 90), widen=True), one)
    np.testing.assert_array_equal(np.concatenate([mean(slice(0, 13)), mean(slice(13, 90))]), one)


def test_zero_weight_inputs_are_not_read():
    z = np.zeros((4, 3), np.float32)
    labels = InputChunk("lab", "labels", ["a", "b", "c"], {}, label_ids=np.zeros(4, np.int64))
    got = weighted_mean_probs([chunk("m", "logits", z), labels], [1.0, 0.0])
    np.testing.assert_allclose(got, np.full((4, 3), 1 / 3), rtol=1e-6)


def test_refusals():
    z = np.zeros((4, 3), np.float32)
    with pytest.raises(GraphError, match="every input has weight 0"):
        weighted_mean_probs([chunk("m", "logits", z)], [0.0])
    labels = InputChunk("lab", "labels", ["a", "b", "c"], {}, label_ids=np.zeros(4, np.int64))
    with pytest.raises(GraphError, match="'lab' holds labels"):
        weighted_mean_probs([chunk("m", "logits", z), labels], [1.0, 1.0])
    with pytest.raises(GraphError, match="'short' has scores of shape \\[3, 3\\]"):
        weighted_mean_probs([chunk("m", "logits", z), chunk("short", "logits", z[:3])], [1, 1])


def test_soft_vote_of_many_float16_inputs_matches_float64(small_pieces):
    rng = np.random.default_rng(2)
    inputs = [("logits", rng.normal(scale=2.0, size=(40, K)).astype(np.float16)) for _ in range(24)]
    ids = [f"b{i:02d}" for i in range(24)]
    classes = [f"c{k}" for k in range(K)]
    weights = {i: float(w) for i, w in zip(ids, rng.random(24), strict=True)}
    comb = SoftVote({"weights": weights}, classes=classes)
    chunks = [
        InputChunk(i, "logits", classes, {}, scores=s)
        for i, (_, s) in zip(ids, inputs, strict=True)
    ]
    out = comb.apply({"inputs": chunks}, slice(0, 40), on_fit_split=False)
    want = reference(inputs, [weights[i] for i in ids])
    np.testing.assert_allclose(out.scores, want, rtol=2e-6, atol=1e-7)
