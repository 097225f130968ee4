"""The fusion-graph engine: parsing, foreach, selection, planning, execution, cache, CLI."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ensemble_engine import plugins
from ensemble_engine.combiner import Combiner, Output, Role
from ensemble_engine.errors import GraphError
from ensemble_engine.graph import execute, load_graph, plan
from ensemble_engine.graph import runner as graph_runner
from ensemble_engine.hookspecs import hookimpl
from ensemble_engine.plugins import PluginHost
from ensemble_engine.store import PredictionStore, open_store

CLASSES = ["a", "b", "c", "d"]
K = len(CLASSES)
CALLS: Counter = Counter()


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class Mean(Combiner):
    """Mean of the inputs' probabilities times ``scale``; its fit records each input's top-1."""

    roles = (Role("inputs", kinds=("logits", "probs")),)
    params_schema = {"type": "object", "properties": {"scale": {"type": "number", "default": 1.0}}}
    needs_fit = True
    output_kind = "probs"

    def __init__(self, params=None, classes=None):
        super().__init__(params, classes)
        CALLS["init"] += 1

    def fit(self, inputs, labels):
        CALLS["fit"] += 1
        self.fitted_state = {
            "top1": {s.id: float((s.read().labels() == labels).mean()) for s in inputs["inputs"]}
        }

    def apply(self, inputs, rows, on_fit_split):
        CALLS["apply"] += 1
        CALLS["max_rows"] = max(CALLS["max_rows"], rows.stop - rows.start)
        probs = np.mean([c.probs() for c in inputs["inputs"]], axis=0)
        return Output("probs", scores=probs * self.params["scale"])


class Vote(Combiner):
    """Majority of the inputs' top-1 labels, lowest class on a tie, with vote counts."""

    output_kind = "labels"

    def __init__(self, params=None, classes=None):
        super().__init__(params, classes)
        CALLS["init"] += 1

    def apply(self, inputs, rows, on_fit_split):
        CALLS["apply"] += 1
        votes = np.zeros((rows.stop - rows.start, len(self.classes)), np.float32)
        for chunk in inputs["inputs"]:
            votes[np.arange(len(votes)), chunk.labels()] += 1
        return Output("labels", labels=votes.argmax(axis=1), votes=votes)


class Keep(Combiner):
    """Two roles: returns the base labels (enough to test role mappings)."""

    roles = (Role("base", many=False), Role("extra", subset_ok=True))
    output_kind = "labels"

    def apply(self, inputs, rows, on_fit_split):
        return Output("labels", labels=inputs["base"][0].labels())


class Fails(Vote):
    """Refuses the test split half way through it, as a combiner may refuse data."""

    def apply(self, inputs, rows, on_fit_split):
        if not on_fit_split and rows.start > 0:
            raise GraphError("fails: these rows cannot be combined; use other inputs")
        return super().apply(inputs, rows, on_fit_split)


class GraphTestPlugin:
    @hookimpl
    def register_combiners(self, register):
        register("mean", Mean)
        register("vote", Vote)
        register("keep", Keep)
        register("fails", Fails)


@pytest.fixture(autouse=True)
def host(monkeypatch):
    """A plugin host with the test combiners only, so these tests depend on no other plugin."""
    test_host = PluginHost()
    test_host.add(GraphTestPlugin(), "graph_tests", version="1.0")
    monkeypatch.setattr(plugins, "_host", test_host)
    CALLS.clear()
    return test_host


def add(
    st: PredictionStore,
    name: str,
    seed: int,
    kind: str = "logits",
    chunk_rows=None,
    splits=("val", "test"),
    **meta,
) -> None:
    """Write a prediction that leans towards the known labels, in chunks of ``chunk_rows``."""
    rng = np.random.default_rng(seed)
    meta = {"source": {"type": "producer", "plugin": "test"}, **meta}
    for split in splits:
        sp = st.split(split)
        scores = rng.normal(size=(sp.n, K)).astype(np.float32)
        known = sp.labels >= 0
        scores[np.flatnonzero(known), sp.labels[known]] += 1.0
        with st.prediction_writer(name, split, kind=kind, meta=meta, chunk_rows=chunk_rows) as w:
            w.write(softmax(scores) if kind == "probs" else scores)


@pytest.fixture(scope="module")
def template_store(tmp_path_factory) -> Path:
    """Built once; each test works on its own copy."""
    path = tmp_path_factory.mktemp("template") / "s.zarr"
    st = open_store(path, "w")
    st.set_classes(CLASSES)
    rng = np.random.default_rng(0)
    st.add_split("val", [f"v{i}" for i in range(30)], rng.integers(0, K, 30))
    st.add_split("test", [f"t{i}" for i in range(20)])  # unlabelled, as a challenge test set
    for i, (loss, size) in enumerate([("ce", 32), ("ce", 46), ("focal", 32), ("focal", 46)]):
        for b, backbone in enumerate(["r18", "r34"]):
            add(
                st,
                f"{backbone}-{loss}-{size}",
                10 * i + b,
                backbone=backbone,
                loss=loss,
                test_size=size,
            )
    return path


@pytest.fixture
def store(tmp_path, template_store) -> PredictionStore:
    shutil.copytree(template_store, tmp_path / "s.zarr")
    return open_store(tmp_path / "s.zarr", "a")


def write_graph(tmp_path: Path, text: str, name: str = "g.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def names_and_hashes(st: PredictionStore) -> dict[str, str]:
    return {p.id: p.attrs.get("node_hash", p.attrs["created"]) for p in st.list()}


TWO_STAGE = """\
version: 1
fit: val
apply: [val, test]
nodes:
  per_{loss}:
    foreach: {loss: [ce, focal]}
    combiner: mean
    inputs: {where: {loss: "{loss}"}}
    params: {scale: 1.0}
  all:
    combiner: vote
    inputs: ["per_*"]
output: all
"""


# --- parsing and selection -----------------------------------------------------------------------


def test_foreach_expands_ids_inputs_and_typed_params(tmp_path, store):
    spec = load_graph(
        write_graph(
            tmp_path,
            """\
version: 1
fit: val
apply: test
nodes:
  m_{loss}_{size}:
    foreach: {loss: [ce, focal], size: [32, 46]}
    combiner: mean
    inputs: {where: {loss: "{loss}", test_size: "{size}"}}
    params: {scale: "{size}"}
output: m_ce_32
""",
        )
    )
    assert spec.apply == ["test"] and [t.key for t in spec.nodes] == ["m_{loss}_{size}"]
    p = plan(spec, store)
    assert [n.id for n in p.nodes] == ["m_ce_32", "m_ce_46", "m_focal_32", "m_focal_46"]
    node = p.node("m_focal_46")
    # "{size}" alone keeps the number's type, so the params schema (a number) accepts it; the
    # where value "46" (text) matches the stored test_size 46 (a number)
    assert node.params == {"scale": 46}
    assert node.inputs == ["r18-focal-46", "r34-focal-46"]
    assert node.binding == {"loss": "focal", "size": 46}
    assert p.splits == ["val", "test"]  # the fit split is always written


def test_globs_exclusions_where_lists_and_nodes(tmp_path, store):
    add(store, "cov-x", 99, loss="ce", test_size=32)
    add(store, "half", 98, splits=("val",))  # not on test: never selectable by a glob
    spec = load_graph(
        write_graph(
            tmp_path,
            """\
version: 1
fit: val
apply: [test]
nodes:
  glob:
    combiner: mean
    inputs: ["r18-*", "!*-46", "r34-ce-32"]
  where:
    combiner: mean
    inputs: {where: {loss: [ce, focal], test_size: "32", name: "!cov-*"}}
  nodes_and_stored:
    combiner: vote
    inputs: ["glob", "wh*", "cov-*"]
  roles:
    combiner: keep
    inputs: {base: glob, extra: {where: {name: "cov-*"}}}
output: roles
""",
        )
    )
    p = plan(spec, store)
    assert p.node("glob").inputs == ["r18-ce-32", "r18-focal-32", "r34-ce-32"]
    assert p.node("where").inputs == ["r18-ce-32", "r18-focal-32", "r34-ce-32", "r34-focal-32"]
    node = p.node("nodes_and_stored")
    assert node.inputs == ["glob", "where", "cov-x"]
    assert [r.node for r in node.roles["inputs"]] == [True, True, False]
    assert p.node("roles").roles["extra"][0].name == "cov-x"


def test_globs_skip_stale_outputs_of_the_same_graph_only(tmp_path, store):
    execute(plan(load_graph(write_graph(tmp_path, TWO_STAGE)), store), store)
    renamed = """\
version: 1
fit: val
apply: [test]
nodes:
  only: {combiner: mean, inputs: ["r18-*"]}
  every: {combiner: vote, inputs: ["*"]}
output: every
"""
    # g.yaml's per_ce, per_focal and all are its own old outputs: a glob must not pick them
    p = plan(load_graph(write_graph(tmp_path, renamed)), store)
    assert p.node("every").inputs == ["only"] + sorted(n for n in store.names() if "-" in n)
    # another graph sees them as stored predictions like any other
    p = plan(load_graph(write_graph(tmp_path, renamed, name="h.yaml")), store)
    assert {"per_ce", "per_focal", "all"} <= set(p.node("every").inputs)


def test_auto_foreach_and_set_override(tmp_path, store):
    add(store, "r50-ce-46", 50, backbone="r50", loss="ce", test_size=46)
    text = TWO_STAGE.replace("[ce, focal]", "auto").replace("per_{loss}", "per_{loss}_{size}")
    text = text.replace('{loss: "{loss}"}', '{loss: "{loss}", test_size: "{size}"}')
    text = text.replace("{loss: auto}", "{loss: auto, size: auto}")
    path = write_graph(tmp_path, text)
    p = plan(load_graph(path), store)
    assert [n.id for n in p.nodes] == [
        "per_ce_32",
        "per_ce_46",
        "per_focal_32",
        "per_focal_46",
        "all",
    ]
    assert p.node("per_ce_46").inputs == ["r18-ce-46", "r34-ce-46", "r50-ce-46"]
    p = plan(load_graph(path, {"loss": ["focal"], "size": "auto"}), store)
    assert [n.id for n in p.nodes] == ["per_focal_32", "per_focal_46", "all"]


def test_plan_orders_inputs_first_then_file_order(tmp_path, store):
    spec = load_graph(
        write_graph(
            tmp_path,
            """\
version: 1
fit: val
apply: [test]
nodes:
  final: {combiner: vote, inputs: [late, early]}
  early: {combiner: mean, inputs: ["r18-ce-*"]}
  other: {combiner: mean, inputs: ["r34-ce-*"]}
  late: {combiner: vote, inputs: [early, other]}
output: final
""",
        )
    )
    assert [n.id for n in plan(spec, store).nodes] == ["early", "other", "late", "final"]


# --- execution, lineage, cache -------------------------------------------------------------------


def test_execute_writes_every_split_with_lineage(tmp_path, store):
    spec = load_graph(write_graph(tmp_path, TWO_STAGE.replace("apply: [val, test]", "apply: test")))
    p = plan(spec, store)
    results = execute(p, store)
    assert [(r.id, r.cached) for r in results] == [
        ("per_ce", False),
        ("per_focal", False),
        ("all", False),
    ]
    inputs = ["r18-ce-32", "r18-ce-46", "r34-ce-32", "r34-ce-46"]
    labels = store.split("val").labels
    for split in ("val", "test"):  # val is the fit split: written although apply names test only
        got = store.read("per_ce", split)
        want = np.mean([softmax(store.read(name, split)) for name in inputs], axis=0)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    attrs = store.get("per_ce", "test").attrs
    assert attrs["source"] == {
        "type": "combiner",
        "plugin": "graph_tests",
        "plugin_version": "1.0",
        "params": {"scale": 1.0},
    }
    assert attrs["combiner"] == "mean" and attrs["inputs"] == inputs
    assert attrs["graph"] == spec.hash and attrs["graph_name"] == "g"
    assert attrs["node_hash"] == p.node("per_ce").node_hash and attrs["foreach"] == {"loss": "ce"}
    top1 = {n: float((store.read(n, "val").argmax(1) == labels).mean()) for n in inputs}
    assert attrs["state"] == {"top1": pytest.approx(top1)}
    # the vote node: labels with votes, and metrics where labels are known
    probs = [store.read(n, "val") for n in ("per_ce", "per_focal")]
    votes = np.zeros((30, K))
    for pr in probs:
        votes[np.arange(30), pr.argmax(1)] += 1
    np.testing.assert_array_equal(store.read("all", "val"), votes.argmax(1))
    np.testing.assert_array_equal(store.read_votes("all", "val"), votes)
    assert results[2].metrics["val"]["top1"] == pytest.approx((votes.argmax(1) == labels).mean())
    assert results[2].gain["val"] == pytest.approx(
        results[2].metrics["val"]["top1"] - max(results[i].metrics["val"]["top1"] for i in (0, 1))
    )
    assert results[2].gain["test"] is None  # test is unlabelled


def test_rerun_of_an_unchanged_graph_does_no_combiner_work(tmp_path, store):
    path = write_graph(tmp_path, TWO_STAGE)
    execute(plan(load_graph(path), store), store)
    assert CALLS["init"] == 3 and CALLS["fit"] == 2
    before = names_and_hashes(store)
    CALLS.clear()
    results = execute(plan(load_graph(path), store), store)
    assert all(r.cached for r in results)
    assert CALLS == Counter()
    assert names_and_hashes(store) == before
    assert results[0].metrics["val"] == store.get("per_ce", "val").metrics
    CALLS.clear()
    results = execute(plan(load_graph(path), store), store, force=True)
    assert not any(r.cached for r in results) and CALLS["init"] == 3


THREE_NODES = """\
version: 1
fit: val
apply: [val, test]
nodes:
  per_ce: {combiner: mean, inputs: {where: {loss: ce}}, params: {scale: 1.0}}
  per_focal: {combiner: mean, inputs: {where: {loss: focal}}, params: {scale: 1.0}}
  all: {combiner: vote, inputs: ["per_*"]}
output: all
"""


def test_changing_one_node_recomputes_it_and_its_dependents_only(tmp_path, store):
    path = write_graph(tmp_path, THREE_NODES)
    execute(plan(load_graph(path), store), store)
    before = names_and_hashes(store)
    path.write_text(
        THREE_NODES.replace("focal}}, params: {scale: 1.0}", "focal}}, params: {scale: 2.0}")
    )
    CALLS.clear()
    p = plan(load_graph(path), store)
    assert {n.id: n.cached for n in p.nodes} == {"per_ce": True, "per_focal": False, "all": False}
    results = execute(p, store)
    assert [r.cached for r in results] == [True, False, False]
    assert CALLS["init"] == 2 and CALLS["fit"] == 1  # per_focal and all; only mean fits
    after = names_and_hashes(store)
    assert after["per_ce/test"] == before["per_ce/test"]
    assert after["all/test"] != before["all/test"]
    np.testing.assert_allclose(store.read("per_focal", "test").sum(1), 2.0, rtol=1e-5)


def test_streaming_reads_each_stored_chunk_once(tmp_path, monkeypatch):
    st = open_store(tmp_path / "big.zarr", "w")
    st.set_classes(CLASSES)
    rng = np.random.default_rng(1)
    st.add_split("val", [f"v{i}" for i in range(100)], rng.integers(0, K, 100))
    st.add_split("test", [f"t{i}" for i in range(100)])
    add(st, "x", 1, chunk_rows=16, loss="ce")  # 7 chunks per split
    add(st, "y", 2, chunk_rows=24, loss="ce")  # 5 chunks per split, not aligned with x's
    add(st, "z", 3, kind="probs", loss="ce")  # one chunk
    reads: Counter = Counter()
    original = PredictionStore.iter_rows

    def counting(self, name, split, chunk_rows=None):
        for rows, block in original(self, name, split, chunk_rows):
            reads[(name, split, rows.start)] += 1
            yield rows, block

    monkeypatch.setattr(PredictionStore, "iter_rows", counting)
    monkeypatch.setattr(graph_runner, "chunk_rows_for", lambda k, itemsize: 10)  # 10-row blocks
    spec = load_graph(
        write_graph(
            tmp_path,
            """\
version: 1
fit: val
apply: [test]
nodes:
  v: {combiner: vote, inputs: [x, y, z]}
output: v
""",
        )
    )
    execute(plan(spec, st), st)
    assert set(reads.values()) == {1}  # every stored chunk read exactly once
    assert sorted(k[2] for k in reads if k[:2] == ("x", "test")) == list(range(0, 100, 16))
    assert sorted(k[2] for k in reads if k[:2] == ("y", "val")) == list(range(0, 100, 24))
    assert CALLS["apply"] == 20  # 10 blocks per split
    votes = np.zeros((100, K))
    for name in ("x", "y", "z"):
        votes[np.arange(100), st.read(name, "test").argmax(1)] += 1
    np.testing.assert_array_equal(st.read("v", "test"), votes.argmax(1))
    np.testing.assert_array_equal(st.read_votes("v", "test"), votes)
    assert st.group["predictions/v/test/label"].chunks == (10,)


def test_a_combiner_error_names_the_node_and_leaves_no_half_output(tmp_path, store, monkeypatch):
    monkeypatch.setattr(graph_runner, "chunk_rows_for", lambda k, itemsize: 8)
    path = write_graph(tmp_path, TWO_STAGE.replace("combiner: vote", "combiner: fails"))
    with pytest.raises(GraphError) as exc:
        execute(plan(load_graph(path), store), store)
    assert str(exc.value) == (
        f"{path}:10: node 'all': fails: these rows cannot be combined; use other inputs"
    )
    assert store.exists("all", "val") and not store.exists("all", "test", include_incomplete=True)
    assert store.exists("per_focal", "test")  # the nodes before it are complete and kept


# --- the command line ----------------------------------------------------------------------------


def test_cli_plan_writes_nothing_and_combine_runs_end_to_end(tmp_path, store, run_cli):
    path = write_graph(tmp_path, "store: s.zarr\n" + TWO_STAGE)  # store: relative to the file
    before = names_and_hashes(store)
    res = run_cli("combine", path, "--plan", "--json")
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)
    assert [n["id"] for n in shown["nodes"]] == ["per_ce", "per_focal", "all"]
    assert shown["nodes"][2]["inputs"] == {"inputs": ["per_ce", "per_focal"]}
    assert not any(n["cached"] for n in shown["nodes"]) and shown["splits"] == ["val", "test"]
    assert names_and_hashes(open_store(store.path, "r")) == before
    res = run_cli("combine", path, "--plan")
    assert res.exit_code == 0 and "to compute" in res.stdout and "per_focal" in res.stdout
    assert names_and_hashes(open_store(store.path, "r")) == before

    res = run_cli("combine", path)
    assert res.exit_code == 0, res.output
    assert "per_ce" in res.stdout and "all *" in res.stdout and "new" in res.stdout
    res = run_cli("combine", path, "--store", store.path, "--json")
    nodes = json.loads(res.stdout)["nodes"]
    assert [n["cached"] for n in nodes] == [True, True, True]
    st = open_store(store.path, "r")
    assert nodes[2]["metrics"]["val"] == st.get("all", "val").metrics
    assert set(nodes[0]["metrics"]) == {"val", "test"} and nodes[0]["gain"]["test"] is None
    res = run_cli("combine", path, "--set", "loss=focal", "--json", "--force")
    assert [n["id"] for n in json.loads(res.stdout)["nodes"]] == ["per_focal", "all"]


def test_cli_graphs_lists_the_shipped_graphs(run_cli):
    res = run_cli("graphs", "--json")
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["vipriors2021"]["output"] == "final" and rows["vipriors2021"]["fit"] == "val"
    assert load_graph("vipriors2021").source == "vipriors2021.yaml"


def test_where_skips_single_view_predictions_unless_asked():
    from ensemble_engine.graph.select import where_matches

    merged = {"loss": "ce", "test_size": 32}
    view = {**merged, "view": "hflip"}
    assert where_matches("r-ce-s32", merged, {"loss": "ce", "test_size": 32})
    assert not where_matches("r-ce-s32.view-hflip", view, {"loss": "ce", "test_size": 32})
    assert where_matches("r-ce-s32.view-hflip", view, {"loss": "ce", "view": "hflip"})
