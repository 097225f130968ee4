"""Broken graph files: each is one line naming the file, the line, the node and the fix.

Every case marks the line the message must point at with ``# <-``. Each is checked through the
Python API and through ``ee combine`` (exit code 2, one line on stderr, no traceback), and the
store must be byte for byte unchanged afterwards.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from ensemble_engine import plugins
from ensemble_engine.errors import GraphError
from ensemble_engine.graph import load_graph, plan
from ensemble_engine.store import open_store

CLASSES = ["a", "b", "c", "d"]
HEAD = "version: 1\nfit: val\napply: [test]\nnodes:\n"


@pytest.fixture(autouse=True)
def fusion_host(monkeypatch):
    """The real fusion combiners, and no other plugin whose state could mask a graph error."""
    import ee_fusion

    host = plugins.PluginHost()
    host.add(ee_fusion, "ee_fusion", version="test", builtin=True)
    monkeypatch.setattr(plugins, "_host", host)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("errors") / "s.zarr"
    st = open_store(path, "w")
    st.set_classes(CLASSES)
    rng = np.random.default_rng(0)
    st.add_split("val", [f"v{i}" for i in range(12)], rng.integers(0, 4, 12))
    st.add_split("test", [f"t{i}" for i in range(8)])
    st.add_split("unl", [f"u{i}" for i in range(8)])  # no labels
    st.add_split("extra", [f"e{i}" for i in range(8)])
    producer = {"source": {"type": "producer", "plugin": "test"}, "loss": "ce"}

    def put(name, splits, kind="logits", classes=CLASSES):
        for split in splits:
            n = st.split(split).n
            if kind == "labels":
                st.write_prediction(
                    name, split, kind=kind, labels=rng.integers(0, 4, n), meta=producer
                )
            else:
                st.write_prediction(
                    name,
                    split,
                    kind=kind,
                    meta=producer,
                    classes=classes,
                    scores=rng.normal(size=(n, len(classes))),
                )

    put("m1", ("val", "test", "unl"))
    put("m2", ("val", "test", "unl"))
    put("lab", ("val", "test"), kind="labels")
    put("spec-x", ("val", "test"), classes=["a", "b", "__other__"])
    put("half", ("val",))
    put("stale", ("val", "extra"))
    st.add_split("extra", [f"x{i}" for i in range(8)], replace=True)  # stale now predicts others
    return path


CASES = [
    (
        "unknown combiner",
        HEAD
        + """\
  x:
    combiner: soft_votes  # <-
    inputs: [m1, m2]
output: x
""",
        "node 'x': unknown combiner 'soft_votes' (known: ",
    ),
    (
        "unknown reference",
        HEAD
        + """\
  x:
    combiner: soft_vote
    inputs: [m2, m11]  # <-
output: x
""",
        "input 'm11' is neither a node of this graph nor a stored prediction; did you mean 'm1'?",
    ),
    (
        "node id shadows a stored prediction",
        HEAD
        + """\
  m1:  # <-
    combiner: soft_vote
    inputs: [m2]
output: m1
""",
        "node 'm1': its id is ambiguous: stored prediction m1/",
    ),
    (
        "glob selects nothing",
        HEAD
        + """\
  x:
    combiner: hard_vote
    inputs: ["zz*"]  # <-
output: x
""",
        "input pattern 'zz*' matches no node and no stored prediction",
    ),
    (
        "where selects nothing",
        HEAD
        + """\
  x:
    combiner: soft_vote
    inputs: {where: {loss: focal}}  # <-
output: x
""",
        "where {loss: focal} selects no stored prediction usable on val, test",
    ),
    (
        "partial stored prediction",
        HEAD
        + """\
  x:
    combiner: soft_vote
    inputs: [m1, half]  # <-
output: x
""",
        "input 'half' is not stored for split test; produce half on test",
    ),
    (
        "cycle",
        HEAD
        + """\
  a:
    combiner: hard_vote
    inputs: [m1, b]  # <-
  b: {combiner: hard_vote, inputs: [a, m2]}
output: b
""",
        "node 'a': its inputs form a cycle: a -> b -> a",
    ),
    (
        "bad params",
        HEAD
        + """\
  x:
    combiner: soft_vote
    inputs: [m1, m2]
    params: {weights: bogus}  # <-
output: x
""",
        "node 'x': bad params for soft_vote: weights:",
    ),
    (
        "unknown top-level key",
        HEAD
        + """\
  x: {combiner: hard_vote, inputs: [m1]}
output: x
colour: red  # <-
""",
        "unknown key 'colour' in the file; use only apply, description, fit, nodes, output",
    ),
    (
        "unknown node key",
        HEAD
        + """\
  x:
    combiner: hard_vote
    input: [m1]  # <-
output: x
""",
        "node 'x': unknown key 'input' in the node; use only combiner, description",
    ),
    (
        "node without inputs",
        HEAD
        + """\
  x:  # <-
    combiner: hard_vote
output: x
""",
        "node 'x': the node lacks the key 'inputs'; add inputs: to the node",
    ),
    (
        "not a mapping",
        "- version: 1  # <-\n",
        "the file is not a mapping of keys; write the keys version, fit, apply, nodes and output",
    ),
    (
        "wrong version",
        """\
version: 2  # <-
fit: val
apply: test
nodes: {x: {combiner: hard_vote, inputs: [m1]}}
output: x
""",
        "graph file version 2 is not supported (this ee reads version 1); write version: 1",
    ),
    (
        "apply not a split name",
        """\
version: 1
fit: val
apply: 3  # <-
nodes: {x: {combiner: hard_vote, inputs: [m1]}}
output: x
""",
        "apply: 3 is not valid under any of the given schemas; expected a split name or a list",
    ),
    (
        "fit split missing from the store",
        """\
version: 1
fit: valid  # <-
apply: test
nodes: {x: {combiner: hard_vote, inputs: [m1]}}
output: x
""",
        "fit split 'valid' is not in store",
    ),
    (
        "fit split unlabelled",
        """\
version: 1
fit: unl  # <-
apply: test
nodes: {x: {combiner: hard_vote, inputs: [m1]}}
output: x
""",
        "fit split 'unl' has no labels; fit on a labelled split",
    ),
    (
        "output not a node",
        HEAD
        + """\
  x: {combiner: hard_vote, inputs: [m1]}
output: final  # <-
""",
        "output 'final' is not a node of the graph; name one of x",
    ),
    (
        "roles given as a list",
        HEAD
        + """\
  x:
    combiner: coverage
    inputs: [m1, spec-x]  # <-
output: x
""",
        "combiner coverage takes the roles base, specialists; give inputs as a mapping",
    ),
    (
        "role missing",
        HEAD
        + """\
  x:
    combiner: coverage
    inputs: {base: m1}  # <-
output: x
""",
        "role 'specialists' of combiner coverage has no inputs; add specialists: [...]",
    ),
    (
        "role unknown",
        HEAD
        + """\
  x:
    combiner: coverage
    inputs:
      base: m1
      specialist: [spec-x]  # <-
output: x
""",
        "combiner coverage has no role 'specialist'; use the roles base, specialists",
    ),
    (
        "one-input role given several",
        HEAD
        + """\
  x:
    combiner: coverage
    inputs: {base: "m*", specialists: [spec-x]}  # <-
output: x
""",
        "role 'base' of coverage takes one input, got 2 (m1, m2)",
    ),
    (
        "input kind not accepted",
        HEAD
        + """\
  x:
    combiner: soft_vote
    inputs: [m1, lab]  # <-
output: x
""",
        "input 'lab' holds labels, which role 'inputs' of soft_vote does not take",
    ),
    (
        "class subset outside a subset role",
        HEAD
        + """\
  x:
    combiner: hard_vote
    inputs: [m1, spec-x]  # <-
output: x
""",
        "input 'spec-x' covers 3 classes, not the store's 4",
    ),
    (
        "split fingerprints differ",
        """\
version: 1
fit: val
apply: extra
nodes:
  x:
    combiner: hard_vote
    inputs: [stale]  # <-
output: x
""",
        "input 'stale' was predicted on other samples of split 'extra'",
    ),
    (
        "placeholder not defined",
        HEAD
        + """\
  x_{loss}:
    foreach: {loss: [ce]}
    combiner: hard_vote
    inputs: ["{los}*"]  # <-
output: x_ce
""",
        "node 'x_{loss}': placeholder {los} in its inputs is not defined by foreach",
    ),
    (
        "placeholder unused",
        HEAD
        + """\
  x_{loss}:
    foreach:
      loss: [ce]
      size: [32]  # <-
    combiner: hard_vote
    inputs: [m1]
output: x_ce
""",
        "foreach placeholder 'size' is used nowhere",
    ),
    (
        "duplicate ids after expansion",
        HEAD
        + """\
  x_{loss}:  # <-
    foreach: {loss: [ce], m: [m1, m2]}
    combiner: hard_vote
    inputs: ["{m}"]
output: x_ce
""",
        "node 'x_ce': two nodes get the id 'x_ce' from its foreach; put every foreach placeholder",
    ),
    (
        "auto without a where",
        HEAD
        + """\
  x_{m}:
    foreach:
      m: auto  # <-
    combiner: hard_vote
    inputs: ["{m}"]
output: x_m1
""",
        "foreach m: auto needs {m} as a whole value in the inputs' where",
    ),
    (
        "duplicate node id",
        HEAD
        + """\
  x: {combiner: hard_vote, inputs: [m1]}
  x: {combiner: hard_vote, inputs: [m2]}  # <-
output: x
""",
        "duplicate key 'x'",
    ),
    # --- issue 18 (items 13, 14, 20): numbers as text, merge keys, expansion bounds -------
    (
        "a number quoted as text",
        HEAD
        + """\
  x:
    combiner: soft_vote
    inputs: [m1, m2]
    params:
      temperature: "1e-2"  # <-
output: x
""",
        "node 'x': param temperature of soft_vote: '1e-2' is text, not a number; write it as a "
        "plain number without quotes, e.g. temperature: 0.01",
    ),
    (
        "a number as text through foreach",
        HEAD
        + """\
  x_{t}:
    foreach: {t: ["0.5"]}
    combiner: soft_vote
    inputs: [m1, m2]
    params:
      temperature: "{t}"  # <-
output: x_0.5
""",
        "node 'x_0.5': param temperature of soft_vote: '0.5' is text, not a number",
    ),
    (
        "a key given twice beside a merge key",
        "version: 1\nfit: val\napply: [test]\n"
        "base: &base {combiner: hard_vote, inputs: [m1]}\n"
        """\
nodes:
  x:
    <<: *base
    inputs: [m2]
    inputs: [m1, m2]  # <-
output: x
""",
        "duplicate key 'inputs' (first at line 8); write each key once (only keys merged in "
        "with <<: may be overridden)",
    ),
    (
        "foreach beyond the node bound",
        HEAD
        + """\
  x_{a}_{b}_{c}:
    foreach: {a: %s, b: %s, c: %s}  # <-
    combiner: hard_vote
    inputs: [m1]
output: x_0_0_0
"""
        % ((list(range(100)),) * 3),
        "foreach makes 1000000 nodes (100 × 100 × 100), the graph 1000000 in all: more than the "
        "10000 nodes a graph may expand to; list fewer values per placeholder",
    ),
    (
        "foreach nodes beyond the bound in all",
        HEAD
        + """\
  x_{a}_{b}:
    foreach: {a: %s, b: %s}
    combiner: hard_vote
    inputs: [m1]
  y_{a}_{b}:
    foreach: {a: %s, b: %s}  # <-
    combiner: hard_vote
    inputs: [m1]
output: x_0_0
"""
        % ((list(range(100)),) * 4),
        "node 'y_{a}_{b}': foreach makes 10000 nodes (100 × 100), the graph 20000 in all",
    ),
    (
        "aliases of aliases (billion laughs)",
        "version: 1\nfit: val\napply: [test]\n"
        "l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" + ("  # <-\n" if i == 4 else "\n")
            for i in range(1, 8)
        )
        + "nodes: {x: {combiner: hard_vote, inputs: [m1], params: {w: *l7}}}\noutput: x\n",
        "the document's aliases expand to more than 100000 values; write the values out",
    ),
    (
        "an alias inside its own anchor",
        HEAD
        + """\
  x: &x {combiner: hard_vote, inputs: [m1], params: {again: *x}}  # <-
output: x
""",
        "an alias refers to the value that contains it",
    ),
    (
        "invalid yaml",
        HEAD
        + """\
  x: {combiner: hard_vote, inputs: [m1}  # <-
output: x
""",
        "invalid YAML:",
    ),
    # --- issue 21 (item 2): select's cost budget ---------------------------------------------
    (
        "a negative budget",
        HEAD
        + """\
  x:
    combiner: select
    inputs: [m1, m2]
    params: {budget: {gflops: -5}}  # <-
output: x
""",
        "node 'x': bad params for select: budget: gflops -5 must be a positive number",
    ),
    (
        "a budget of both gflops and images_per_s",
        HEAD
        + """\
  x:
    combiner: select
    inputs: [m1, m2]
    params: {budget: {gflops: 5, images_per_s: 100}}  # <-
output: x
""",
        "node 'x': bad params for select: budget: give one of gflops or images_per_s, not both",
    ),
    (
        "a budget with an unknown key",
        HEAD
        + """\
  x:
    combiner: select
    inputs: [m1, m2]
    params:  # <-
      budget: {flops: 5}
output: x
""",
        "node 'x': bad params for select: budget: unknown key 'flops'; give gflops",
    ),
]


def expected_line(text: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if "# <-" in line)


def snapshot(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(("text", "message"), [pytest.param(t, m, id=i) for i, t, m in CASES])
def test_broken_graph_is_one_line_and_writes_nothing(tmp_path, store_path, text, message):
    path = tmp_path / "graph.yaml"
    path.write_text(text)
    before = snapshot(store_path)
    with pytest.raises(GraphError) as exc:
        plan(load_graph(path), open_store(store_path, "a"))
    got = str(exc.value)
    assert "\n" not in got
    assert got.startswith(f"{path}:{expected_line(text)}: "), got
    assert message in got, got
    assert snapshot(store_path) == before


@pytest.mark.parametrize(("text", "message"), [pytest.param(t, m, id=i) for i, t, m in CASES])
def test_broken_graph_through_the_cli(tmp_path, store_path, run_cli, text, message):
    path = tmp_path / "graph.yaml"
    path.write_text(text)
    before = snapshot(store_path)
    res = run_cli("combine", path, "--store", store_path)
    assert res.exit_code == 2
    assert res.stdout == ""
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert res.stderr.startswith(f"Error: {path}:{expected_line(text)}: ")
    assert message in res.stderr
    assert snapshot(store_path) == before


def test_unknown_graph_name_and_set_option(tmp_path, store_path, run_cli):
    res = run_cli("combine", "vipriors2022", "--store", store_path)
    assert res.exit_code == 2 and "no graph file 'vipriors2022'" in res.stderr
    assert "shipped: vipriors2021" in res.stderr
    res = run_cli("combine", "vipriors2021", "--store", store_path, "--set", "colour=red")
    assert res.exit_code == 2
    assert (
        "--set colour: no node has a foreach placeholder 'colour' (placeholders: loss, size)"
        in res.stderr
    )
    res = run_cli("combine", "vipriors2021", "--store", store_path, "--set", "loss")
    assert res.exit_code == 2 and "--set 'loss' is not KEY=VALUES" in res.stderr


def test_exponent_numbers_and_merge_keys_read_as_written(tmp_path, store_path):
    """``1e-2`` is the number 0.01 (YAML 1.1 reads it as text), and ``<<: *a`` merges a node's
    keys into another, whose own keys win: neither is an error (issue 18, items 13 and 14)."""
    path = tmp_path / "graph.yaml"
    path.write_text(
        HEAD
        + """\
  a: &a
    combiner: soft_vote
    inputs: [m1, m2]
    params: {temperature: 1e-2}
  b:
    <<: *a
    params: {temperature: 2E1}
  c:
    <<: *a
    inputs: [a, b]
output: c
"""
    )
    nodes = {n.id: n for n in plan(load_graph(path), open_store(store_path, "a")).nodes}
    assert nodes["a"].params["temperature"] == 0.01
    assert nodes["b"].params["temperature"] == 20.0
    assert nodes["b"].combiner == nodes["c"].combiner == "soft_vote"
    assert nodes["b"].inputs == ["m1", "m2"] and nodes["c"].inputs == ["a", "b"]
    assert nodes["c"].line == 12  # a merged node's line is its own key's


def test_set_option_reads_exponent_numbers():
    from ensemble_engine.graph import parse_set_option

    assert parse_set_option(["t=1e-2,5E3,x"]) == {"t": [0.01, 5000.0, "x"]}
