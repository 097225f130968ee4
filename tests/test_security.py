"""What ee refuses to do with untrusted files: execute, unpickle, escape, import, or go online.

- YAML is read only through ``safe_load``: a python tag is a ``GraphError`` and runs nothing.
- Checkpoints are read only through ``torch.load(weights_only=True)``, and no other unpickling
  loader appears in the source (an AST scan of ensemble_engine/ and plugins/).
- Prediction, split and node ids cannot leave their folders.
- Plugins come only from installed entry points: a "module:attr" name in a graph imports nothing.
- Nothing opens a network connection: store init, import, combine and report run with sockets off.
"""

from __future__ import annotations

import ast
import re
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from ensemble_engine.errors import GraphError, PluginError, StoreError
from ensemble_engine.graph import load_graph, plan
from ensemble_engine.plugins import KINDS, get_host
from ensemble_engine.store import open_store

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    p
    for folder in (REPO / "ensemble_engine", REPO / "plugins")
    for p in folder.rglob("*.py")
    if "build" not in p.parts
)


@pytest.fixture
def store(tmp_path):
    st = open_store(tmp_path / "s.zarr", "w")
    st.set_classes(["a", "b", "c"])
    st.add_split("val", [f"v{i}" for i in range(9)], np.arange(9) % 3)
    st.add_split("test", [f"t{i}" for i in range(6)])
    for split in ("val", "test"):
        n = st.split(split).n
        st.write_prediction("m1", split, kind="logits", scores=np.eye(3)[np.arange(n) % 3])
    return st


def files_outside(root: Path, store: Path) -> set[Path]:
    """Files under ``root`` that are neither in the store nor in its lock folder."""
    locks = store.parent / f".{store.name}.locks"
    return {
        p
        for p in root.rglob("*")
        if p.is_file() and not p.is_relative_to(store) and not p.is_relative_to(locks)
    }


# --- YAML -------------------------------------------------------------------------------------

PAYLOADS = {
    "object/apply": "!!python/object/apply:os.system ['touch {marker}']",
    "object/new": "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
    "name": "!!python/name:os.system",
}


@pytest.mark.parametrize("payload", list(PAYLOADS.values()), ids=list(PAYLOADS))
def test_a_python_tag_in_a_graph_is_refused_and_runs_nothing(tmp_path, store, run_cli, payload):
    marker = tmp_path / "executed"
    graph = tmp_path / "graph.yaml"
    graph.write_text(
        "version: 1\nfit: val\napply: test\nnodes:\n  x:\n    combiner: hard_vote\n"
        f"    inputs: [m1]\n    params:\n      p: {payload.format(marker=marker)}\noutput: x\n"
    )
    with pytest.raises(GraphError, match=r"graph\.yaml:9: invalid YAML: could not determine"):
        load_graph(graph)
    res = run_cli("combine", graph, "--store", store.path)
    assert res.exit_code == 2 and "invalid YAML" in res.stderr
    assert not marker.exists()


def test_a_python_tag_in_a_set_option_is_refused(tmp_path, store, run_cli):
    marker = tmp_path / "executed"
    res = run_cli(
        "combine",
        "vipriors2021",
        "--store",
        store.path,
        "--set",
        f"loss=!!python/object/apply:os.system ['touch {marker}']",
    )
    assert res.exit_code == 2 and "is not plain YAML" in res.stderr
    assert not marker.exists()


def test_yaml_is_only_ever_safe_loaded():
    unsafe = []
    for path in SOURCES:
        for call in calls(path):
            name = dotted(call.func)
            if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all"):
                unsafe.append(f"{path.relative_to(REPO)}:{call.lineno}: {name}")
    assert unsafe == []


# --- unpickling -------------------------------------------------------------------------------


def calls(path: Path, tree: ast.AST | None = None) -> list[ast.Call]:
    tree = tree if tree is not None else ast.parse(path.read_text("utf-8"))
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def dotted(func: ast.expr) -> str:
    """``torch.load`` for ``torch.load(...)``; the bare name for ``load(...)``."""
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def keyword_is_true(call: ast.Call, name: str) -> bool:
    return any(
        k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True
        for k in call.keywords
    )


# Unpickling that never sees a file: (path, function) -> what is unpickled.
TRUSTED_UNPICKLING = {
    ("parallel.py", "_write_range"): "the parent process's fitted combiner, sent to its workers",
    ("shards.py", "_portable"): "a round trip of this process's own exception, made just before",
}


def unsafe_loads(path: Path) -> list[str]:
    """Calls that can run pickled code: torch.load without weights_only=True, pickle loads,
    numpy loads with allow_pickle=True (outside ``TRUSTED_UNPICKLING``)."""
    tree = ast.parse(path.read_text("utf-8"))
    trusted = {
        id(call)
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef) and (path.name, fn.name) in TRUSTED_UNPICKLING
        for call in ast.walk(fn)
    }
    found = []
    for call in calls(path, tree):
        name = dotted(call.func)
        bad = id(call) not in trusted and (
            (name == "torch.load" and not keyword_is_true(call, "weights_only"))
            or name in ("pickle.load", "pickle.loads", "dill.load", "cloudpickle.load")
            or (name in ("np.load", "numpy.load") and keyword_is_true(call, "allow_pickle"))
        )
        if bad:
            found.append(f"{path.name}:{call.lineno}: {name}")
    return found


def test_the_scan_flags_an_unsafe_torch_load(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import torch\nimport numpy as np\n"
        "a = torch.load(p)\nb = torch.load(p, weights_only=False)\n"
        "c = torch.load(p, map_location='cpu', weights_only=True)\n"
        "d = np.load(p, allow_pickle=True)\n"
    )
    assert unsafe_loads(bad) == [
        "bad.py:3: torch.load",
        "bad.py:4: torch.load",
        "bad.py:6: np.load",
    ]


def test_checkpoints_load_only_with_weights_only_and_nothing_unpickles():
    torch_loads = [c for p in SOURCES for c in calls(p) if dotted(c.func) == "torch.load"]
    assert torch_loads, "the checkpoint reader should be among the scanned files"
    assert [f for p in SOURCES for f in unsafe_loads(p)] == []
    imports_from_torch = [
        f"{p.name}:{n.lineno}"
        for p in SOURCES
        for n in ast.walk(ast.parse(p.read_text("utf-8")))
        if isinstance(n, ast.ImportFrom)
        and n.module == "torch"
        and any(a.name == "load" for a in n.names)
    ]
    assert imports_from_torch == []  # a bare load(...) would hide from the scan


# --- ids and folders --------------------------------------------------------------------------

ESCAPES = ["../evil", "..", "a/b", "/tmp/evil", "..\\evil", ".hidden", "x\x00y"]


@pytest.mark.parametrize("name", ESCAPES)
def test_a_prediction_id_cannot_leave_the_store(tmp_path, store, run_cli, name):
    np.save(tmp_path / "x.npy", np.zeros((9, 3), np.float32))
    before = files_outside(tmp_path, Path(store.path))
    res = run_cli("import", store.path, tmp_path / "x.npy", "--split", "val", "--id", name)
    assert res.exit_code == 2 and "invalid prediction name" in res.stderr
    with pytest.raises(StoreError, match="invalid split name"):
        store.add_split(name, ["x"])
    assert files_outside(tmp_path, Path(store.path)) == before
    assert store.names() == ["m1"] and store.split_names() == ["test", "val"]


@pytest.mark.parametrize("node_id", ["../evil", ".x", "a/b"])
def test_a_graph_node_id_cannot_leave_the_store(tmp_path, store, node_id):
    graph = tmp_path / "graph.yaml"
    graph.write_text(
        "version: 1\nfit: val\napply: test\n"
        f"nodes:\n  '{node_id}': {{combiner: hard_vote, inputs: [m1]}}\noutput: '{node_id}'\n"
    )
    before = files_outside(tmp_path, Path(store.path))
    with pytest.raises(GraphError, match=f"invalid node id '{re.escape(node_id)}'"):
        plan(load_graph(graph), store)
    assert files_outside(tmp_path, Path(store.path)) == before


# --- plugins come from entry points only ------------------------------------------------------


@pytest.fixture
def probe_module(tmp_path, monkeypatch):
    """An importable module that would leave a marker file if anything imported it."""
    marker = tmp_path / "imported"
    (tmp_path / "ee_probe_payload.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\nclass Evil: pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("ee_probe_payload", None)
    yield marker
    sys.modules.pop("ee_probe_payload", None)


def test_a_module_path_as_combiner_is_unknown_and_imports_nothing(
    tmp_path, store, run_cli, probe_module
):
    graph = tmp_path / "graph.yaml"
    graph.write_text(
        "version: 1\nfit: val\napply: test\n"
        "nodes:\n  x: {combiner: 'ee_probe_payload:Evil', inputs: [m1]}\noutput: x\n"
    )
    res = run_cli("combine", graph, "--store", store.path)
    assert res.exit_code == 2
    assert "unknown combiner 'ee_probe_payload:Evil' (known: " in res.stderr
    assert "ee_probe_payload" not in sys.modules and not probe_module.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_no_registry_imports_a_name_it_was_not_given(kind, probe_module):
    registry = get_host().registry(kind)
    for name in ("ee_probe_payload:Evil", "ee_probe_payload.Evil", "ee_probe_payload"):
        with pytest.raises(PluginError, match="unknown"):
            registry.get(name)
    assert "ee_probe_payload" not in sys.modules and not probe_module.exists()


# --- no network -------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Internet sockets, connections and name lookups raise; every attempt is recorded."""
    attempts: list[str] = []
    real_socket = socket.socket

    class GuardedSocket(real_socket):
        def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
            inet = family in (socket.AF_INET, socket.AF_INET6) or (family == -1 and fileno is None)
            if inet:
                attempts.append(f"socket({family})")
                raise OSError("network access is disabled in this test")
            super().__init__(family, type, proto, fileno)

    def refuse(name):
        def guard(*args, **kwargs):
            attempts.append(f"{name}{args[:1]}")
            raise OSError("network access is disabled in this test")

        return guard

    monkeypatch.setattr(socket, "socket", GuardedSocket)
    for name in ("create_connection", "getaddrinfo", "gethostbyname"):
        monkeypatch.setattr(socket, name, refuse(name))
    return attempts


def test_the_whole_pipeline_runs_with_the_network_off(tmp_path, digits_dir, run_cli, no_network):
    path = tmp_path / "ee.zarr"
    res = run_cli("store", "init", path, "--data", digits_dir)
    assert res.exit_code == 0, res.output
    st = open_store(path, "r")
    rng = np.random.default_rng(0)
    for name, noise in (("r18", 1.0), ("r34", 1.5), ("vit", 2.0)):
        for split in ("val", "test"):
            labels = st.split(split).labels
            logits = np.eye(10, dtype=np.float32)[np.maximum(labels, 0)] * 2
            np.save(tmp_path / "x.npy", logits + rng.normal(0, noise, logits.shape))
            res = run_cli("import", path, tmp_path / "x.npy", "--split", split, "--id", name)
            assert res.exit_code == 0, res.output
    graph = tmp_path / "graph.yaml"
    graph.write_text(
        "version: 1\nfit: val\napply: [val, test]\nnodes:\n"
        "  soft: {combiner: soft_vote, inputs: ['r*', vit], params: {weights: softmax_score}}\n"
        "  hard: {combiner: hard_vote, inputs: [soft, r18, r34]}\n"
        "output: hard\n"
    )
    res = run_cli("combine", graph, "--store", path, "--json")
    assert res.exit_code == 0, res.output
    res = run_cli("report", path, "-o", tmp_path / "report.html")
    assert res.exit_code == 0, res.output
    html = (tmp_path / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing fetched
    res = run_cli("export", path, "hard/test", "-o", tmp_path / "sub.csv")
    assert res.exit_code == 0, res.output
    assert no_network == []
    assert open_store(path, "r").get("hard", "test").metrics["top1"] > 0.5


def test_the_network_guard_is_real(no_network):
    with pytest.raises(OSError, match="disabled"):
        socket.create_connection(("example.org", 80))
    with pytest.raises(OSError, match="disabled"):
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    left, right = socket.socketpair()  # local pairs (event loops use them) still work
    left.close()
    right.close()
    assert len(no_network) == 2


def test_run_id_cannot_escape_the_runs_folder(tmp_path, digits_dir, run_cli):
    runs = tmp_path / "runs"
    res = run_cli(
        "produce",
        "resnet10t-ce",
        "--data",
        digits_dir,
        "--store",
        tmp_path / "s.zarr",
        "--runs-dir",
        runs,
        "--run-id",
        "../escape",
        "--epochs",
        "1",
    )
    assert res.exit_code == 2, res.output
    assert "invalid run id '../escape'" in res.stderr
    assert not (tmp_path / "escape").exists()
    assert not runs.exists() or list(runs.iterdir()) == []
