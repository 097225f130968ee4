"""``ee combine GRAPH --output NODE``: the node and what it reads, nothing else, end to end.

The shipped seed graph's ``final`` node reads specialists (``cov-*``) that a user trains only
after stage 2 exists, so the README's walkthrough runs ``--output stage2`` first.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ensemble_engine.store import open_store

K = 4
CLASSES = [f"c{i}" for i in range(K)]


@pytest.fixture
def store_path(tmp_path):
    """Two losses x two sizes x two backbones of noisy logits, no specialist yet."""
    rng = np.random.default_rng(7)
    path = tmp_path / "s.zarr"
    st = open_store(path, "w")
    st.set_classes(CLASSES)
    truth = {"val": rng.integers(0, K, 40), "test": rng.integers(0, K, 30)}
    for split, y in truth.items():
        st.add_split(split, [f"{split}{i}.png" for i in range(len(y))], y)
    for b in ("r18", "r34"):
        for loss in ("ce", "taylor_ce"):
            for size in (32, 46):
                meta = {
                    "source": {"type": "producer", "plugin": "timm"},
                    "backbone": b,
                    "loss": loss,
                    "test_size": size,
                }
                for split, y in truth.items():
                    logits = rng.normal(0, 1, (len(y), K))
                    logits[np.arange(len(y)), y] += 1.5
                    st.write_prediction(
                        f"{b}-{loss}-{size}", split, kind="logits", scores=logits, meta=meta
                    )
    return path


def add_specialist(path, name: str = "cov-01") -> None:
    st = open_store(path, "a")
    rng = np.random.default_rng(1)
    for split in ("val", "test"):
        n = st.split(split).n
        st.write_prediction(
            name,
            split,
            kind="logits",
            scores=rng.normal(size=(n, 3)),
            classes=["c0", "c1", "__other__"],
            meta={"source": {"type": "producer", "plugin": "timm"}, "loss": "ce"},
        )


def test_without_output_the_seed_graph_refuses_a_store_without_specialists(run_cli, store_path):
    result = run_cli("combine", "vipriors2021", "--store", store_path)
    assert result.exit_code == 2
    assert "'cov-*' matches no node" in result.stderr


def test_output_runs_the_node_and_its_ancestors_only(run_cli, store_path):
    result = run_cli("combine", "vipriors2021", "--store", store_path, "--output", "stage2")
    assert result.exit_code == 0, result.output
    assert "left out (not read by stage2): final" in result.stderr
    st = open_store(store_path, "r")
    names = {p.name for p in st.list()}
    assert {"soft_ce_32", "soft_ce_46", "soft_taylor_ce_32", "soft_taylor_ce_46"} <= names
    assert "stage2" in names and "final" not in names
    assert {p.split for p in st.list("stage2")} == {"val", "test"}

    # once a specialist exists the whole graph runs, stages 1-2 found cached
    add_specialist(store_path)
    full = run_cli("combine", "vipriors2021", "--store", store_path, "--json")
    assert full.exit_code == 0, full.output
    report = json.loads(full.stdout)
    assert report["left_out"] == []
    cached = {n["id"]: n["cached"] for n in report["nodes"]}
    assert cached["stage2"] is True and cached["final"] is False
    assert all(v for k, v in cached.items() if k.startswith("soft_"))


def test_output_plan_writes_nothing_and_lists_what_is_left_out(run_cli, store_path):
    before = sorted(p.id for p in open_store(store_path, "r").list())
    result = run_cli(
        "combine",
        "vipriors2021",
        "--store",
        store_path,
        "--output",
        "soft_ce_32",
        "--plan",
        "--json",
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["output"] == "soft_ce_32"
    assert [n["id"] for n in doc["nodes"]] == ["soft_ce_32"]
    assert set(doc["left_out"]) == {
        "soft_ce_46",
        "soft_taylor_ce_32",
        "soft_taylor_ce_46",
        "stage2",
        "final",
    }
    assert sorted(p.id for p in open_store(store_path, "r").list()) == before


def test_output_that_is_not_a_node_is_one_line(run_cli, store_path):
    result = run_cli("combine", "vipriors2021", "--store", store_path, "--output", "stage3")
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "--output 'stage3' is not a node of the graph" in result.stderr
    assert "stage2" in result.stderr  # the fix names the nodes there are
