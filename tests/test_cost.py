"""Every prediction knows its inference cost (issue 21, item 1): the ``cost`` attr.

A produced prediction's FLOPs equal those ``FlopCounterMode`` counts here on the same timm model
(× views); a fused node sums its distinct members (params once per run); a member without cost
makes every node over it "cost unknown"; imports carry cost through ``--fact``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import small_digits

from ensemble_engine.store import open_store

N, K = 40, 5


@pytest.fixture(scope="module")
def produced(tmp_path_factory):
    """``ee produce resnet10t-ce`` once on small digits at 16 px with two views: store path."""
    from click.testing import CliRunner

    from ensemble_engine.cli import build_cli

    tmp = tmp_path_factory.mktemp("cost")
    data = small_digits(tmp / "digits", train_per_class=3, val_per_class=2, test_images=10, size=16)
    args = [
        "produce", "resnet10t-ce", "--data", data, "--store", tmp / "s.zarr",
        "--runs-dir", tmp / "runs", "--set", "defaults=digits", "--img-size", "16",
        "--epochs", "1", "--workers", "0", "--test-sizes", "16", "--tta", "identity,hflip",
    ]  # fmt: skip
    result = CliRunner().invoke(build_cli(), [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return tmp / "s.zarr"


@pytest.mark.slow
def test_produced_cost_is_flop_counter_mode_of_the_model_times_views(
    produced, run_cli, monkeypatch
):
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = timm.create_model("resnet10t", pretrained=False, num_classes=10).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, 16, 16))
    gflops = counter.get_total_flops() * 2 / 1e9  # two views: identity, hflip
    params = sum(p.numel() for p in model.parameters())

    store = open_store(produced, "r")
    preds = store.list()
    assert sorted(p.split for p in preds) == ["test", "val"]
    for pred in preds:
        cost = pred.attrs["cost"]
        assert set(cost) == {"gflops", "params", "views", "images_per_s", "device", "members"}
        assert cost["gflops"] == pytest.approx(gflops, rel=1e-9)
        assert cost["params"] == params
        assert cost["views"] == 2
        assert cost["images_per_s"] > 0
        assert cost["device"] == "cpu"
        assert cost["members"] == [pred.name] == ["resnet10t-ce-s16"]
    rows = json.loads(run_cli("ls", produced, "--json").stdout)["predictions"]
    print(json.dumps(rows[0]["cost"]))  # an example for the record (pytest -s)
    assert all(row["cost"]["gflops"] == pytest.approx(gflops) for row in rows)
    monkeypatch.setenv("COLUMNS", "250")  # gflops gives way first at 80 columns
    table = run_cli("ls", produced).stdout
    assert "GFLOPs" in table and f"{gflops:.4g}" in table


# --- fused cost --------------------------------------------------------------------------------


def _cost(name, gflops, params, views, rate, device="cpu"):
    return {
        "gflops": gflops, "params": params, "views": views, "images_per_s": rate,
        "device": device, "members": [name],
    }  # fmt: skip


MEMBERS = {  # name: (run, cost); a-s16 and a-s24 are one model (run "ra") at two sizes
    "a-s16": ("ra", _cost("a-s16", 1.0, 1000, 2, 100.0)),
    "a-s24": ("ra", _cost("a-s24", 2.25, 1000, 2, 50.0)),
    "b-s16": ("rb", _cost("b-s16", 4.0, 3000, 1, 25.0)),
    "c": (None, None),  # an import without cost
}


def _store(path: Path, members: dict = MEMBERS) -> None:
    st = open_store(path, "w")
    st.set_classes([f"c{i}" for i in range(K)])
    st.add_split("val", [f"v{i:03d}" for i in range(N)], np.arange(N) % K)
    rng = np.random.default_rng(0)
    for name, (run, cost) in members.items():
        meta = {"run": run} if run else {}
        if cost is not None:
            meta["cost"] = cost
        scores = rng.normal(size=(N, K)).astype(np.float32)
        st.write_prediction(name, "val", kind="logits", scores=scores, meta=meta)


GRAPH = """\
version: 1
fit: val
apply: [val]
nodes:
  ab:
    combiner: soft_vote
    inputs: [a-s16, a-s24, b-s16]
  ab2:
    combiner: soft_vote
    inputs: [ab, b-s16, a-s16]
  abc:
    combiner: soft_vote
    inputs: [ab, c]
  top:
    combiner: soft_vote
    inputs: [abc, ab2]
output: top
"""


def _combine(tmp_path: Path, run_cli) -> dict:
    (tmp_path / "g.yaml").write_text(GRAPH)
    res = run_cli("combine", tmp_path / "g.yaml", "--store", tmp_path / "s.zarr")
    assert res.exit_code == 0, res.output
    st = open_store(tmp_path / "s.zarr", "r")
    return {n: st.get(n, "val").attrs["cost"] for n in ("ab", "ab2", "abc", "top")}


def test_a_fused_node_sums_its_distinct_members(tmp_path, run_cli):
    _store(tmp_path / "s.zarr")
    cost = _combine(tmp_path, run_cli)
    by_hand = {
        "gflops": 1.0 + 2.25 + 4.0,
        "params": 1000 + 3000,  # run ra counted once
        "views": 2 + 2 + 1,
        "images_per_s": 1 / (1 / 100 + 1 / 50 + 1 / 25),
        "device": "cpu",
        "members": ["a-s16", "a-s24", "b-s16"],
    }
    for node in ("ab", "ab2"):  # ab2 reads ab and two of its members again: counted once
        assert set(cost[node]) == set(by_hand), node
        for key, value in by_hand.items():
            assert cost[node][key] == (pytest.approx(value) if key != "members" else value), key
    run = open_store(tmp_path / "s.zarr", "r").get("ab", "val").attrs
    assert run["inputs"] == ["a-s16", "a-s24", "b-s16"]


def test_a_member_without_cost_makes_every_node_over_it_unknown(tmp_path, run_cli):
    _store(tmp_path / "s.zarr")
    cost = _combine(tmp_path, run_cli)
    for node in ("abc", "top"):  # abc reads c; top reads abc (second stage)
        assert cost[node]["gflops"] is None, node
        assert cost[node]["params"] is None and cost[node]["images_per_s"] is None
        assert cost[node]["unknown"] == ["c"]
        assert cost[node]["members"] == ["a-s16", "a-s24", "b-s16", "c"]
    assert "unknown" not in cost["ab"]


def test_devices_that_differ_give_no_device(tmp_path, run_cli):
    members = dict(MEMBERS)
    members["b-s16"] = ("rb", _cost("b-s16", 4.0, 3000, 1, 25.0, device="NVIDIA H100"))
    _store(tmp_path / "s.zarr", members)
    assert _combine(tmp_path, run_cli)["ab"]["device"] is None


# --- imports -----------------------------------------------------------------------------------


def test_import_cost_facts_round_trip(tmp_path, run_cli):
    _store(tmp_path / "s.zarr", {})
    np.save(tmp_path / "x.npy", np.zeros((N, K), np.float32))
    args = ("import", tmp_path / "s.zarr", tmp_path / "x.npy", "--split", "val")
    res = run_cli(
        *args, "--id", "m", "--fact", "gflops=4.1", "--fact", "params=25557032",
        "--fact", "images_per_s=800", "--fact", "views=2", "--fact", "loss=ce",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    res = run_cli(*args, "--id", "bare", "--fact", "loss=ce")
    assert res.exit_code == 0, res.output
    st = open_store(tmp_path / "s.zarr", "r")
    attrs = st.get("m", "val").attrs
    assert attrs["cost"] == {
        "gflops": 4.1, "params": 25557032, "views": 2, "images_per_s": 800.0, "device": None,
        "members": ["m"],
    }  # fmt: skip
    assert "gflops" not in attrs and attrs["loss"] == "ce"
    assert "cost" not in st.get("bare", "val").attrs  # no cost facts: cost unknown
    assert run_cli("validate", tmp_path / "s.zarr").exit_code == 0
