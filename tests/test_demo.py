"""``ee demo``: the quick pipeline end to end, and the pieces its summary is built from.

The quick demo runs once for the module (it trains real models: ~1 minute on two cores); its
printed numbers are checked against values recomputed here from the stored scores and labels.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ee_demo import tables
from ee_demo.config import FULL, LOSSES, QUICK
from ee_demo.pipeline import MARKER, DemoRun, find_weak

from ensemble_engine.combiner import OTHER
from ensemble_engine.store import open_store

SUMMARY = re.compile(
    r"test top-1: best single (?P<best>[\d.]+)% \((?P<name>[\w-]+)\) → fused (?P<fused>[\d.]+)% "
    r"→ covered (?P<covered>[\d.]+)%; error ratio final/best single (?P<ratio>[\d.]+)"
)


def accuracy(store, name: str, split: str) -> float:
    """Top-1 of a stored prediction, recomputed from its scores or labels."""
    truth = np.asarray(store.split(split).labels)
    values = store.read(name, split)
    predicted = values.argmax(axis=1) if values.ndim == 2 else values
    return float((predicted == truth).mean())


# --- the quick demo, end to end ----------------------------------------------------------------


NETGUARD = Path(__file__).parent / "netguard"  # sitecustomize: no internet in any process


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> tuple[Path, str]:
    """``ee demo --quick`` with internet sockets off here and in every process it spawns."""
    from click.testing import CliRunner

    from ensemble_engine.cli import build_cli

    base = tmp_path_factory.mktemp("demo")
    workdir, attempts = base / "work", base / "network-attempts.log"
    with pytest.MonkeyPatch.context() as mp:
        path = os.pathsep.join(filter(None, [str(NETGUARD), os.environ.get("PYTHONPATH")]))
        mp.setenv("PYTHONPATH", path)
        mp.setenv("EE_TEST_NO_NETWORK", str(attempts))
        for name in ("socket", "create_connection", "getaddrinfo", "gethostbyname"):
            mp.setattr(socket, name, getattr(socket, name))  # restored when the block ends
        spec = importlib.util.spec_from_file_location("ee_netguard", NETGUARD / "sitecustomize.py")
        guard = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(guard)  # reads EE_TEST_NO_NETWORK and installs the guard here
        result = CliRunner().invoke(build_cli(), ["demo", "--quick", "--workdir", str(workdir)])
    assert result.exit_code == 0, result.output
    assert not attempts.exists(), attempts.read_text()
    return workdir, result.output


def test_the_network_guard_reaches_spawned_processes(tmp_path):
    """The guard the quick demo runs under does stop a child process from connecting."""
    attempts = tmp_path / "attempts.log"
    env = {**os.environ, "PYTHONPATH": str(NETGUARD), "EE_TEST_NO_NETWORK": str(attempts)}
    code = "import socket; socket.create_connection(('127.0.0.1', 9), timeout=1)"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0 and "network access is disabled" in proc.stderr
    assert "create_connection" in attempts.read_text()


@pytest.mark.slow
def test_quick_demo_prints_every_table(quick_demo):
    _, out = quick_demo
    for title in ("Table I: backbones × losses", "Table II: one loss", "fusion graph",
                  "weak classes: stacked → final"):  # fmt: skip
        assert title in out
    jobs = QUICK.producer_jobs()
    for job in jobs:  # one row per model: backbone, loss, then 2 splits × 3 sizes of numbers
        row = re.search(rf"^ ?{job.backbone} +{job.loss} +(.+)$", out, re.M)
        assert row is not None, job.recipe
        numbers = [float(x) for x in row.group(1).split()]
        assert len(numbers) == 2 * len(QUICK.test_sizes)
        assert all(0 <= x <= 100 for x in numbers)
    for node in ("stage2", "stacked", "final *", f"soft_ce_{QUICK.test_sizes[0]}"):
        assert re.search(rf"^ ?{re.escape(node)} ", out, re.M), node
    assert "ee ls" in out and "ee report" in out and "--plan" in out


@pytest.mark.slow
def test_quick_demo_summary_matches_the_store(quick_demo):
    workdir, out = quick_demo
    match = SUMMARY.search(" ".join(out.split()))  # the line may wrap at 80 columns
    assert match is not None, out
    store = open_store(workdir / "ee.zarr", "r")
    singles = {
        p.name: accuracy(store, p.name, "test")
        for p in store.list(split="test")
        if (p.attrs.get("source") or {}).get("type") == "producer" and "subset" not in p.attrs
    }
    best = max(singles.values())
    fused, covered = accuracy(store, "stacked", "test"), accuracy(store, "final", "test")
    assert float(match["best"]) == pytest.approx(100 * best, abs=0.006)
    assert singles[f"{match['name']}-s{_best_size(singles, match['name'], best)}"] == best
    assert float(match["fused"]) == pytest.approx(100 * fused, abs=0.006)
    assert float(match["covered"]) == pytest.approx(100 * covered, abs=0.006)
    assert float(match["ratio"]) == pytest.approx((1 - covered) / (1 - best), abs=0.006)


def _best_size(singles: dict[str, float], model: str, best: float) -> int:
    return next(int(n.rsplit("-s", 1)[1]) for n, v in singles.items()
                if n.rsplit("-s", 1)[0] == model and v == best)  # fmt: skip


@pytest.mark.slow
def test_quick_demo_writes_an_ordinary_store(quick_demo, run_cli):
    workdir, _ = quick_demo
    store = open_store(workdir / "ee.zarr", "r")
    for job in QUICK.producer_jobs():
        for size in QUICK.test_sizes:
            for split in ("val", "test"):
                pred = store.get(f"{job.name}-s{size}", split)
                assert pred.attrs["test_size"] == size
                assert pred.attrs["tta"] == list(QUICK.tta)
    for loss in LOSSES:
        for size in QUICK.test_sizes:
            assert store.exists(f"soft_{loss}_{size}", "test")
    specialists = [p for p in store.list("cov-*", split="val")]
    assert specialists, "no specialist predictions"
    weak = specialists[0].attrs["subset"]["classes"]
    assert store.classes_of(specialists[0]) == [*weak, OTHER]
    runs = sorted((workdir / "runs").iterdir())
    assert len(runs) == len(QUICK.producer_jobs()) + len(QUICK.specialist_backbones)
    assert all((r / "recipe.yaml").is_file() and (r / "best.pth").is_file() for r in runs)
    assert run_cli("validate", workdir / "ee.zarr").exit_code == 0
    plan = run_cli("combine", workdir / "graph.yaml", "--plan", "--json")
    assert plan.exit_code == 0, plan.output
    assert all(node["cached"] for node in json.loads(plan.output)["nodes"])


@pytest.mark.slow
def test_quick_demo_prints_commands_that_redo_its_steps(quick_demo, run_cli, tmp_path):
    """Each step is printed as the command a user types: a printed ``ee produce`` resolves to
    the demo run's own run id (checked with --plan, which trains nothing), the printed
    ``ee weak-classes`` writes the demo's weak.txt, and the printed ``ee combine`` is cached."""
    workdir, out = quick_demo
    commands = [line.strip()[2:] for line in out.splitlines() if line.strip().startswith("$ ee ")]
    produce = [c for c in commands if c.startswith("ee produce ")]
    runs = {r.name for r in (workdir / "runs").iterdir()}
    assert len(produce) == len(runs)
    specialist = next(c for c in produce if " --subset " in c)
    for command in (produce[0], specialist):
        res = run_cli(*shlex.split(command)[1:], "--force", "--plan", "--json")
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["run_id"] in runs, command
    (weak,) = [c for c in commands if c.startswith("ee weak-classes ")]
    args = shlex.split(weak)[1:]
    assert args[-2:] == ["-o", str(workdir / "weak.txt")]
    assert run_cli(*args[:-1], tmp_path / "weak.txt").exit_code == 0
    assert (tmp_path / "weak.txt").read_text() == (workdir / "weak.txt").read_text()
    combines = [c for c in commands if c.startswith("ee combine ")]
    assert combines == [f"ee combine {workdir / 'graph.yaml'} --output stacked",
                        f"ee combine {workdir / 'graph.yaml'}"]  # fmt: skip
    res = run_cli(*shlex.split(combines[-1])[1:], "--json")
    assert res.exit_code == 0, res.output
    assert all(node["cached"] for node in json.loads(res.stdout)["nodes"])


# --- the pieces --------------------------------------------------------------------------------


def test_configs_keep_the_seed_structure():
    for config in (FULL, QUICK):
        assert config.losses == ("ce", "taylor_ce", "bi_tempered")
        assert len(config.test_sizes) == 3 and len(config.tta) >= 2
        table_one = [j for j in config.producer_jobs() if j.table == "I"]
        assert len(table_one) == len(config.backbones) * 3
    assert len(FULL.backbones) >= 4 and len(FULL.single_loss) >= 2
    names = [j.name for j in FULL.producer_jobs()]
    assert len(names) == len(set(names))


def test_refuses_a_folder_it_did_not_write(tmp_path, run_cli):
    (tmp_path / "notes.txt").write_text("mine")
    result = run_cli("demo", "--quick", "--workdir", tmp_path)
    assert result.exit_code == 2
    assert "--workdir" in result.output and (tmp_path / "notes.txt").is_file()


def test_clears_only_its_own_outputs(tmp_path):
    from ee_demo.pipeline import prepare_workdir

    (tmp_path / MARKER).write_text("{}")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "old").write_text("x")
    (tmp_path / "keep.txt").write_text("x")
    prepare_workdir(tmp_path)
    assert not (tmp_path / "runs").exists() and not (tmp_path / MARKER).exists()
    assert (tmp_path / "keep.txt").is_file()


def test_summary_error_ratio_by_hand():
    # best single 97.00% (3.00% error), covered 98.50% (1.50% error): ratio 1.5 / 3 = 0.5
    s = tables.Summary("m", best_single_test=0.97, fused_test=0.98, covered_test=0.985)
    assert s.error_ratio == pytest.approx(0.5)
    assert "97.00% (m) → fused 98.00% → covered 98.50%; error ratio final/best single 0.50" in (
        s.line()
    )


def _store_with_split(path: Path, labels: list[int], classes: tuple = ("a", "b", "c")):
    store = open_store(path, "a")
    store.set_classes(list(classes))
    store.add_split("val", [f"i{k}" for k in range(len(labels))], labels)
    store.add_split("test", [f"t{k}" for k in range(len(labels))], labels)
    return store


def _producer(store, name: str, split: str, scores: np.ndarray, **facts) -> None:
    meta = {"source": {"type": "producer", "plugin": "t"}, **facts}
    store.write_prediction(name, split, kind="probs", scores=scores, meta=meta, dtype="float32")


def test_producer_scores_group_sizes_and_skip_specialists(tmp_path):
    labels = [0, 1, 2, 0]
    store = _store_with_split(tmp_path / "s.zarr", labels)
    right, wrong = np.eye(3)[labels], np.eye(3)[[1, 1, 2, 0]]  # the second: 3 of 4 right
    for split in ("val", "test"):
        _producer(store, "r-ce-s28", split, right, backbone="r", loss="ce", test_size=28)
        _producer(store, "r-ce-s32", split, wrong, backbone="r", loss="ce", test_size=32)
        _producer(store, "cov-r-ce-s32", split, wrong, backbone="r", loss="ce", test_size=32,
                  subset={"classes": ["a"]})  # fmt: skip
    (model,) = tables.producer_scores(store, [28, 32])
    assert (model.name, model.backbone, model.loss) == ("r-ce", "r", "ce")
    assert model.top1 == {("val", 28): 1.0, ("val", 32): 0.75, ("test", 28): 1.0,
                          ("test", 32): 0.75}  # fmt: skip
    assert model.best("test") == 1.0


def test_weak_classes_are_the_worst_on_val(tmp_path):
    # class a: 2 of 2 right, b: 1 of 2, c: 0 of 2 → below 0.99: c (0.0) then b (0.5)
    labels = [0, 0, 1, 1, 2, 2]
    store = _store_with_split(tmp_path / "ee.zarr", labels)
    for split in ("val", "test"):
        store.write_prediction("stacked", split, kind="labels", labels=np.array([0, 0, 1, 0, 0, 1]),
                               meta={"source": {"type": "combiner"}})  # fmt: skip
    run = DemoRun(tmp_path, QUICK, seed=0)
    assert find_weak(run) == ["b", "c"]


def test_weak_classes_fall_back_to_the_two_worst_as_the_command_does(tmp_path, run_cli):
    # a: 3 of 3, b: 2 of 3 (0.667), c: 3 of 3, d: 3 of 3 → only b below 0.99; --min 2 adds the
    # next worst, a (1.0, the lowest class id among the perfect ones)
    labels = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    predicted = np.array([0, 0, 0, 1, 1, 3, 2, 2, 2, 3, 3, 3])
    store = _store_with_split(tmp_path / "ee.zarr", labels, ("a", "b", "c", "d"))
    for split in ("val", "test"):
        store.write_prediction("stacked", split, kind="labels", labels=predicted,
                               meta={"source": {"type": "combiner"}})  # fmt: skip
    run = DemoRun(tmp_path, QUICK, seed=0)
    assert find_weak(run) == ["a", "b"]
    res = run_cli("weak-classes", store.path, "stacked", "--threshold", "0.99", "--max", "3",
                  "--min", "2")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert res.stdout == "a\nb\n"


# --- the budgeted selection and the frontier table ---------------------------------------------


def _gflops(pred) -> float:
    return float(pred.attrs["cost"]["gflops"])


def _best_single_on_val(store) -> tuple[str, float]:
    """The demo's producer prediction with the best val top-1 (the cheaper on a tie), by hand."""
    names = [f"{j.name}-s{s}" for j in QUICK.producer_jobs() for s in QUICK.test_sizes]
    scored = [(accuracy(store, n, "val"), _gflops(store.get(n, "val")), n) for n in names]
    top1, gflops, name = min(scored, key=lambda t: (-t[0], t[1], t[2]))
    return name, gflops


@pytest.mark.slow
def test_quick_demo_budget_is_the_best_single_cost_on_val(quick_demo):
    import yaml

    workdir, out = quick_demo
    store = open_store(workdir / "ee.zarr", "r")
    name, cost = _best_single_on_val(store)
    assert f"best single on val: {name} (" in " ".join(out.split())
    graph = yaml.safe_load((workdir / "graph.yaml").read_text())
    assert graph["nodes"]["budgeted"]["params"]["budget"] == {"gflops": cost}
    for split in ("val", "test"):
        pred = store.get("budgeted", split)
        assert pred.attrs["combiner"] == "select"
        state = pred.attrs["state"]
        assert state["budget"] == {"gflops": cost}
        assert 0 < state["cost"]["gflops"] <= cost
        assert _gflops(pred) == pytest.approx(state["cost"]["gflops"])
        assert not any(m.startswith("cov-") for m in state["chosen"])
    assert re.search(r"^ ?budgeted +select ", out, re.M)


def _on_frontier(points: dict[str, tuple[float, float]], name: str) -> bool:
    top1, gflops = points[name]
    return not any(
        t >= top1 and g <= gflops and (t > top1 or g < gflops) for t, g in points.values()
    )


@pytest.mark.slow
def test_quick_demo_frontier_table_matches_the_store(quick_demo):
    workdir, out = quick_demo
    store = open_store(workdir / "ee.zarr", "r")
    points = {
        p.name: (accuracy(store, p.name, "test"), _gflops(p))
        for p in store.list(split="test")
        if store.classes_of(p) == store.classes and (p.attrs.get("cost") or {}).get("gflops")
    }
    assert f"$ ee frontier {workdir / 'ee.zarr'} --split test" in out
    best, _ = _best_single_on_val(store)
    rows = [("best single (val)", best), ("budgeted selection", "budgeted"),
            ("stage 2, learned", "stacked"), ("coverage", "final")]  # fmt: skip
    for role, name in rows:
        row = re.search(rf"^ ?{re.escape(role)} +(\S+) +([\d.]+) +([\d.e+-]+) *(●?) *$", out, re.M)
        assert row is not None, role
        top1, gflops = points[name]
        assert row[1] == name
        assert float(row[2]) == pytest.approx(100 * top1, abs=0.006)
        assert float(row[3]) == pytest.approx(gflops, rel=1e-3)
        assert (row[4] == "●") == _on_frontier(points, name), name


def test_best_single_takes_the_cheaper_on_a_tie_and_ignores_others():
    from ee_demo.costs import best_single

    points = [
        {"name": "a", "top1": 0.9, "gflops": 2.0},
        {"name": "b", "top1": 0.9, "gflops": 1.0},
        {"name": "c", "top1": 0.8, "gflops": 0.5},
        {"name": "stacked", "top1": 0.99, "gflops": 9.0},  # not a producer: never the best
    ]
    assert best_single(points, ["a", "b", "c"])["name"] == "b"


def test_graph_text_writes_the_exact_budget():
    import yaml
    from ee_demo.costs import BUDGET_TOKEN, graph_text
    from ee_demo.pipeline import GRAPH_FILE

    template = (Path(tables.__file__).parent / GRAPH_FILE).read_text()
    graph = yaml.safe_load(graph_text(template, 0.1 + 0.2))
    assert graph["nodes"]["budgeted"]["params"]["budget"] == {"gflops": 0.1 + 0.2}
    with pytest.raises(Exception, match=BUDGET_TOKEN):
        graph_text(template + f"# {BUDGET_TOKEN}\n", 1.0)
