"""``ee combine --workers K``: the rows of each split written by K processes, same result as one.

The synthetic store has 6 classes, 230 labelled val rows and 170 test rows (every other one
unlabelled); 12 producers (3 backbones x 2 losses x 2 test sizes) stored in 32-row chunks and
three class-subset specialists. The engine's blocks are cut to 20 rows, so a split is 9 to 12
blocks and the workers' ranges start inside the inputs' chunks.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from ensemble_engine import plugins, prediction_io
from ensemble_engine.combiner import OTHER, Combiner, Output, Role
from ensemble_engine.errors import GraphError, StoreError
from ensemble_engine.graph import execute, load_graph, parallel, plan
from ensemble_engine.graph import runner as graph_runner
from ensemble_engine.graph.parallel import block_ranges
from ensemble_engine.hookspecs import hookimpl
from ensemble_engine.locks import StoreLock
from ensemble_engine.plugins import PluginHost
from ensemble_engine.store import PredictionStore, open_store

K = 6
CLASSES = [f"c{i}" for i in range(K)]
N = {"val": 230, "test": 170}
STEP = 20  # rows per engine block (and per output chunk) in these tests
SPECIALISTS = {"cov-012a": [0, 1, 2], "cov-012b": [0, 1, 2], "cov-23": [2, 3]}

SMALL_GRAPH = """\
version: 1
fit: val
apply: [val, test]
nodes:
  soft:
    combiner: soft_vote
    inputs: {{where: {{loss: ce, name: "!cov-*"}}}}
    params: {{weights: softmax_score, temperature: 0.05}}
  hard:
    combiner: hard_vote
    inputs: ["*-focal-*"]
  both:
    combiner: hard_vote
    inputs: [soft, hard, probe]
  probe:
    combiner: probe
    inputs: ["r18-*"]
    params: {{log: "{log}", seed: 7}}
output: both
"""


class Probe(Combiner):
    """A weighted mean of probabilities with weights drawn from ``seed`` at fit time.

    Every fit and apply appends ``<pid> fit`` / ``<pid> apply <row>`` to the file ``log``, which
    shows which process did what. ``fail_from`` refuses the rows from that row on;
    ``crash_from`` ends the process there.
    """

    roles = (Role("inputs", kinds=("logits", "probs")),)
    params_schema = {
        "type": "object",
        "properties": {
            "log": {"type": "string"},
            "seed": {"type": "integer", "default": 0},
            "fail_from": {"type": "integer", "default": -1},
            "crash_from": {"type": "integer", "default": -1},
        },
    }
    needs_fit = True
    output_kind = "probs"

    def _log(self, what: str) -> None:
        with open(self.params["log"], "a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()} {what}\n")

    def fit(self, inputs, labels):
        self._log("fit")
        draws = np.random.default_rng(self.params["seed"]).random(len(inputs["inputs"])) + 0.1
        self.fitted_state = {
            "weights": {s.id: float(w) for s, w in zip(inputs["inputs"], draws, strict=True)}
        }

    def apply(self, inputs, rows, on_fit_split):
        self._log(f"apply {rows.start}")
        if 0 <= self.params["fail_from"] <= rows.start:
            raise GraphError("probe refuses these rows; use other inputs")
        if 0 <= self.params["crash_from"] <= rows.start:
            os._exit(3)  # a worker killed, e.g. for memory
        weights = self.fitted_state["weights"]
        total = sum(weights.values())
        out = sum(np.float32(weights[c.id] / total) * c.probs() for c in inputs["inputs"])
        return Output("probs", scores=out)


class ProbePlugin:
    @hookimpl
    def register_combiners(self, register):
        register("probe", Probe)


@pytest.fixture(autouse=True)
def host(monkeypatch):
    """The real fusion combiners and the probe; 20-row blocks."""
    import ee_fusion

    test_host = PluginHost()
    test_host.add(ee_fusion, "ee_fusion", version="test", builtin=True)
    test_host.add(ProbePlugin(), "probe", version="1.0")
    monkeypatch.setattr(plugins, "_host", test_host)
    monkeypatch.setattr(graph_runner, "chunk_rows_for", lambda k, itemsize: STEP)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """The synthetic store, built once; each test copies it."""
    rng = np.random.default_rng(11)
    path = tmp_path_factory.mktemp("parallel") / "ee.zarr"
    st = open_store(path, "w")
    st.set_classes(CLASSES)
    truth = {s: rng.integers(0, K, n) for s, n in N.items()}
    labels = {"val": truth["val"], "test": np.where(np.arange(N["test"]) % 2, -1, truth["test"])}
    for split, n in N.items():
        st.add_split(split, [f"{split}{i:04d}" for i in range(n)], labels[split])
    for b, backbone in enumerate(["r18", "r34", "r50"]):
        for loss in ("ce", "focal"):
            for size in (32, 48):
                meta = {"source": {"type": "producer", "plugin": "timm"}, "backbone": backbone}
                meta.update(loss=loss, test_size=size)
                for split, y in truth.items():
                    logits = rng.normal(0.0, 1.5, (len(y), K))
                    logits[np.arange(len(y)), y] += 0.5 + 0.3 * b
                    name = f"{backbone}-{loss}-{size}"
                    with st.prediction_writer(
                        name, split, kind="logits", meta=meta, chunk_rows=32
                    ) as w:
                        w.write(logits)
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
    return path


def copy_of(template: Path, dest: Path) -> PredictionStore:
    shutil.copytree(template, dest)
    return open_store(dest, "a")


def snapshot(st: PredictionStore, names: list[str]) -> dict:
    """Every array of every output (metadata and raw bytes) and its attrs but ``created``."""
    out = {}
    for name in names:
        for split in N:
            g = st.group[f"predictions/{name}/{split}"]
            attrs = dict(g.attrs.asdict())
            assert attrs.pop("complete") is True and attrs.pop("created")
            out[name, split, "attrs"] = attrs
            for key in sorted(g.array_keys()):
                arr = g[key]
                out[name, split, key] = (arr.metadata.to_dict(), np.asarray(arr[:]).tobytes())
    return out


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def log_lines(path: Path) -> list[tuple[int, str]]:
    lines = path.read_text("utf-8").splitlines()
    return [(int(pid), what) for pid, what in (line.split(" ", 1) for line in lines)]


def test_block_ranges_are_whole_blocks_split_evenly():
    # 95 rows in 10-row blocks: 10 blocks; after the first, 9 blocks as 4 + 5
    assert block_ranges(95, 10, 2, skip=1) == [(10, 50), (50, 95)]
    # 25 rows: 3 blocks, so at most 3 ranges however many are asked for
    assert block_ranges(25, 10, 4) == [(0, 10), (10, 20), (20, 25)]
    assert block_ranges(25, 10, 1) == [(0, 25)]


def test_two_workers_write_what_one_writes(template, tmp_path, run_cli):
    log = tmp_path / "probe.log"
    graph = tmp_path / "graph.yaml"
    graph.write_text(SMALL_GRAPH.format(log=log), "utf-8")
    one = copy_of(template, tmp_path / "one.zarr")
    execute(plan(load_graph(graph), one), one, workers=1)
    assert {pid for pid, _ in log_lines(log)} == {os.getpid()}
    log.unlink()

    two = copy_of(template, tmp_path / "two.zarr")
    result = run_cli("combine", graph, "--store", two.path, "--workers", "2", "--json")
    assert result.exit_code == 0, result.output
    nodes = ["soft", "hard", "probe", "both"]
    assert snapshot(open_store(two.path, "r"), nodes) == snapshot(one, nodes)

    # fitted once, in the parent; each split's first block by the parent, the rest by 2 workers
    lines = log_lines(log)
    assert [pid for pid, what in lines if what == "fit"] == [os.getpid()]
    applies = [(pid, int(what.split()[1])) for pid, what in lines if what.startswith("apply")]
    expected = [*range(0, N["val"], STEP), *range(0, N["test"], STEP)]
    assert sorted(start for _, start in applies) == sorted(expected)
    assert [start for pid, start in applies if pid == os.getpid()] == [0, 0]
    assert len({pid for pid, _ in applies} - {os.getpid()}) == 2
    check_soft_vote_maths(open_store(two.path, "r"))


def check_soft_vote_maths(st: PredictionStore) -> None:
    """The soft vote is the weighted mean its recorded weights give (numpy here), and every
    output's metrics are those of its whole stored array."""
    for split in N:
        pred = st.get("soft", split)
        weights = pred.attrs["state"]["weights"]
        assert sorted(weights) == sorted(p.name for p in st.list("*-ce-*", split=split))
        probs = {name: softmax(st.read(name, split).astype(np.float64)) for name in weights}
        total = sum(weights.values())
        expected = sum(w / total * probs[name] for name, w in weights.items())
        got = st.read("soft", split)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        y = st.split(split).labels
        known = y >= 0
        assert pred.metrics["n"] == known.sum()
        assert pred.metrics["top1"] == (got.argmax(1) == y)[known].mean()
        nll = -np.log(got[known, y[known]].astype(np.float64)).mean()
        assert pred.metrics["nll"] == pytest.approx(nll, rel=1e-9)
        both = st.get("both", split)
        assert both.metrics["top1"] == (st.read("both", split) == y)[known].mean()


@pytest.mark.slow
def test_the_seed_graph_with_two_workers_equals_one(template, tmp_path):
    runs = {}
    for workers in (1, 2):
        st = copy_of(template, tmp_path / f"w{workers}.zarr")
        results = execute(plan(load_graph("vipriors2021"), st), st, workers=workers)
        names = [r.id for r in results]
        runs[workers] = (names, snapshot(st, names), [r.metrics for r in results])
    assert runs[1][0] == runs[2][0]
    assert {"stage2", "final"} <= set(runs[1][0]) and len(runs[1][0]) == 6
    assert runs[2][1] == runs[1][1]
    assert runs[2][2] == runs[1][2]


TWO_NODE_GRAPH = """\
version: 1
fit: val
apply: [test]
nodes:
  soft:
    combiner: soft_vote
    inputs: ["r18-*"]
    params: {{weights: softmax_score}}
  probe:
    combiner: probe
    inputs: ["r18-*"]
    params: {{log: "{log}"}}
output: probe
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("param", "error", "message"),
    [
        ("fail_from", GraphError, r"graph.yaml:\d+: node 'probe': probe refuses these rows"),
        ("crash_from", StoreError, r"probe/val: a combine worker process stopped"),
    ],
)
def test_a_failing_worker_leaves_no_output_and_no_lock(template, tmp_path, param, error, message):
    graph = tmp_path / "graph.yaml"
    text = TWO_NODE_GRAPH.format(log=tmp_path / "probe.log")
    graph.write_text(text.replace("log:", f"{param}: 120, log:"), "utf-8")
    st = copy_of(template, tmp_path / "ee.zarr")
    with pytest.raises(error, match=message):
        execute(plan(load_graph(graph), st), st, workers=2)
    assert not st.exists("probe", "val", include_incomplete=True)
    assert not Path(StoreLock(st.path, "probe--val").path).exists()
    assert st.exists("soft", "test")  # the node before it was written


def test_metrics_add_up_bit_for_bit(template, tmp_path, monkeypatch):
    """A writer updates its metrics every METRIC_ROWS rows, here 7, so three times per 20-row
    block: the workers' updates, added up in row order, give a single writer's floats exactly.
    Threads stand in for the processes, which would not see the narrowed METRIC_ROWS."""
    monkeypatch.setattr(prediction_io, "METRIC_ROWS", 7)
    pools = []

    def threads(max_workers, mp_context, initializer, initargs):
        pools.append(ThreadPoolExecutor(max_workers, initializer=initializer, initargs=initargs))
        return pools[-1]

    monkeypatch.setattr(parallel, "ProcessPoolExecutor", threads)
    graph = tmp_path / "graph.yaml"
    graph.write_text(TWO_NODE_GRAPH.format(log=tmp_path / "probe.log"), "utf-8")
    runs = {}
    for workers in (1, 2):
        st = copy_of(template, tmp_path / f"w{workers}.zarr")
        execute(plan(load_graph(graph), st), st, workers=workers)
        runs[workers] = snapshot(st, ["soft", "probe"])
    assert len(pools) == 1
    assert runs[2] == runs[1]


def test_memory_stores_and_single_block_splits_stay_in_the_parent(template, tmp_path, monkeypatch):
    """Another process cannot see this one's memory:// store: the parent writes every row."""
    log = tmp_path / "probe.log"
    graph = tmp_path / "graph.yaml"
    graph.write_text(TWO_NODE_GRAPH.format(log=log), "utf-8")
    local = copy_of(template, tmp_path / "ee.zarr")
    st = open_store("memory://parallel/ee.zarr", "w")
    st.set_classes(CLASSES)
    for split in N:
        sp = local.split(split)
        st.add_split(split, list(sp.sample_ids), sp.labels)
        for pred in local.list("r18-*", split=split):
            meta = {k: pred.attrs[k] for k in ("source", "backbone", "loss", "test_size")}
            data = local.read(pred.name, split)
            st.write_prediction(pred.name, split, kind="logits", scores=data, meta=meta)
    execute(plan(load_graph(graph), st), st, workers=2)
    assert st.exists("probe", "test")
    assert {pid for pid, _ in log_lines(log)} == {os.getpid()}

    log.unlink()
    monkeypatch.setattr(graph_runner, "chunk_rows_for", lambda k, itemsize: 1000)  # one block
    execute(plan(load_graph(graph), local), local, workers=2)
    assert {pid for pid, _ in log_lines(log)} == {os.getpid()}


def test_workers_must_be_positive(template, tmp_path, run_cli):
    st = copy_of(template, tmp_path / "ee.zarr")
    graph = tmp_path / "graph.yaml"
    graph.write_text(SMALL_GRAPH.format(log=tmp_path / "probe.log"), "utf-8")
    with pytest.raises(GraphError, match="workers must be at least 1"):
        execute(plan(load_graph(graph), st), st, workers=0)
    result = run_cli("combine", graph, "--store", st.path, "--workers", "0")
    assert result.exit_code == 2 and "--workers" in result.output
