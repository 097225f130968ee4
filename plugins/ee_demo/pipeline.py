"""The demo's steps: data, producers, the seed graph, weak classes, specialists, coverage.

Each step goes through the same Python API as the commands (``ee data digits``, ``ee produce``,
``ee combine``, ``ee weak-classes``), so the work folder ends up holding exactly what a user
running those commands by hand would have::

    WORKDIR/data/        the digits in the VIPriors layout (train/ val/ test/)
    WORKDIR/ee.zarr      the prediction store: producers, specialists, fusion nodes
    WORKDIR/runs/<run>/  one run folder per trained model (recipe.yaml, summary.csv, best.pth)
    WORKDIR/graph.yaml   the fusion graph, reading ee.zarr (``ee combine WORKDIR/graph.yaml``)
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console

from ensemble_engine import (
    EEError,
    NodeResult,
    PredictionStore,
    execute,
    load_graph,
    open_store,
    plan,
)

from .config import DemoConfig, ProducerJob
from .costs import best_single, frontier, graph_text
from .shown import (
    WEAK_FILE,
    combine_command,
    frontier_command,
    produce_command,
    weak_classes_command,
)
from .workers import TrainOutcome, TrainTask, run_tasks

MARKER = "ee-demo.json"
GRAPH_FILE = "graph.yaml"
STORE_DIR = "ee.zarr"
OUTPUTS = ("data", "runs", STORE_DIR, GRAPH_FILE, WEAK_FILE, MARKER)
# Nodes of the demo graph: the final node's base is what the weak classes are measured on; the
# final node needs the specialists, so the first pass stops before it.
BASE, FINAL = "stacked", "final"
BUDGETED = "budgeted"  # the selection within the best single's cost on val
DATA_SEED = 0  # the digits split is fixed, so every --seed is scored on the same images


@dataclass
class DemoRun:
    """What one demo run did: its folder, timings, the weak classes and the fusion results."""

    workdir: Path
    config: DemoConfig
    seed: int
    weak: list[str] = field(default_factory=list)
    nodes: list[NodeResult] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)  # best single on val: name, top1, gflops
    seconds: dict[str, float] = field(default_factory=dict)  # step → wall seconds

    @property
    def store_path(self) -> Path:
        return self.workdir / STORE_DIR

    @property
    def graph_path(self) -> Path:
        return self.workdir / GRAPH_FILE


def prepare_workdir(workdir: Path) -> None:
    """An empty folder, or one a previous demo wrote (its outputs are removed, nothing else).

    A non-empty folder without the demo's marker is refused: it may hold someone's work.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if not any(workdir.iterdir()):
        return
    if not (workdir / MARKER).is_file():
        raise EEError(
            f"{workdir} is not empty and was not written by `ee demo`; "
            "choose an empty or new --workdir"
        )
    for name in OUTPUTS:
        path = workdir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def write_inputs(run: DemoRun) -> PredictionStore:
    """The digits tree, the store with its splits registered, the marker."""
    from ensemble_engine import open_dataset, register_splits

    source = open_dataset(run.workdir / "data", name="digits", seed=DATA_SEED)
    store = open_store(run.store_path, "a")
    register_splits(store, source)
    marker = {"config": run.config.name, "seed": run.seed}
    (run.workdir / MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
    return store


def write_graph(run: DemoRun, console: Console) -> None:
    """The graph file, its ``budgeted`` node's budget the cost of the best single on val.

    Read before any fusion: the val frontier then holds the producers only, and the most
    accurate row (the cheaper one on a tie) is the best single prediction.
    """
    console.print(f"  $ {frontier_command(run.store_path, 'val')}", style="dim", soft_wrap=True)
    names = [
        f"{j.name}-s{size}" for j in run.config.producer_jobs() for size in run.config.test_sizes
    ]
    run.best = best_single(frontier(run.store_path, "val")["points"], names)
    b = run.best
    console.print(
        f"  best single on val: {b['name']} ({100 * b['top1']:.2f}%, {b['gflops']:.4g} GFLOPs per "
        f"image): the budget of node budgeted in {GRAPH_FILE}"
    )
    template = resources.files(__package__).joinpath(GRAPH_FILE).read_text("utf-8")
    run.graph_path.write_text(graph_text(template, b["gflops"]), encoding="utf-8")


def tasks_for(run: DemoRun, jobs: list[ProducerJob]) -> list[TrainTask]:
    return [
        TrainTask(
            recipe=job.recipe,
            name=job.name,
            data_dir=run.workdir / "data",
            store=str(run.store_path),
            runs_dir=run.workdir / "runs",
            overrides=run.config.overrides(job, run.seed),
            subset=job.subset,
        )
        for job in jobs
    ]


def train_all(
    run: DemoRun, jobs: list[ProducerJob], workers: int, console: Console
) -> list[TrainOutcome]:
    """Train and predict every job (``workers`` at a time), printing a line as each ends."""
    tasks = tasks_for(run, jobs)
    commands = {t.name: produce_command(t, run.workdir / WEAK_FILE) for t in tasks}

    def done(outcome: TrainOutcome) -> None:
        console.print(f"  trained {outcome.name} ({outcome.seconds:.0f} s)")
        console.print(f"    $ {commands[outcome.name]}", style="dim", soft_wrap=True)

    return run_tasks(tasks, workers, done)


def combine(
    run: DemoRun, *, upto: str | None = None, console: Console | None = None
) -> list[NodeResult]:
    """Run the demo graph, as ``ee combine GRAPH [--output NODE]`` does.

    The first pass runs ``upto`` and the nodes it reads only (``--output``): the final node
    reads specialists that do not exist yet. The second, full pass finds them cached.
    """
    if console is not None:
        console.print(f"  $ {combine_command(run.graph_path, upto)}", style="dim", soft_wrap=True)
    spec = load_graph(run.graph_path)
    store = open_store(run.store_path, "a")
    return execute(plan(spec, store, output=upto), store)


def find_weak(run: DemoRun) -> list[str]:
    """The base's weakest classes on val (never test), as ``ee weak-classes STORE stacked
    --threshold T --max K --min 2`` picks them; returned in class order.

    The base's val predictions are out of fold, so these are the classes it gets wrong on
    images it was not fitted on. At least two: a specialist needs a choice between subset
    classes to be of use.
    """
    from ensemble_engine import weak_class_ids

    store = open_store(run.store_path, "r")
    c = run.config
    found = weak_class_ids(store, BASE, "val", c.weak_threshold, max_k=c.max_weak, min_k=c.min_weak)
    order = list(store.classes)
    return sorted(found, key=order.index)


def run_demo(
    workdir: Path, config: DemoConfig, *, seed: int, workers: int, console: Console
) -> DemoRun:
    """Every step of the demo; returns what the tables need. Progress goes to ``console``."""
    run = DemoRun(Path(workdir), config, seed)
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        run.seconds[step] = now - clock
        clock = now

    prepare_workdir(run.workdir)
    write_inputs(run)
    lap("data")
    jobs = config.producer_jobs()
    console.print(
        f"[bold]1/4[/bold] training {len(jobs)} models ({config.epochs} epochs, {workers} at a "
        f"time), each predicted at sizes {', '.join(map(str, config.test_sizes))} with TTA "
        f"{'+'.join(config.tta)}"
    )
    train_all(run, jobs, workers, console)
    lap("producers")
    console.print(
        "[bold]2/4[/bold] fusing: stage 1 soft votes per loss × size; stage 2 hard vote (seed) "
        "and stacked (learned on val); budgeted: a selection within the best single's cost"
    )
    write_graph(run, console)
    combine(run, upto=BASE, console=console)
    lap("fusion")
    run.weak = find_weak(run)
    (run.workdir / WEAK_FILE).write_text("".join(f"{c}\n" for c in run.weak), encoding="utf-8")
    specialists = config.specialist_jobs(run.weak)
    console.print(
        f"[bold]3/4[/bold] weak classes of {BASE} on val: {', '.join(run.weak)}; training "
        f"{len(specialists)} specialist(s) on them + __other__"
    )
    c = run.config
    command = weak_classes_command(
        run.store_path, BASE, c.weak_threshold, c.max_weak, c.min_weak, run.workdir / WEAK_FILE
    )
    console.print(f"  $ {command}", style="dim", soft_wrap=True)
    train_all(run, specialists, workers, console)
    lap("specialists")
    console.print(f"[bold]4/4[/bold] coverage: the specialists correct {BASE}")
    run.nodes = combine(run, console=console)
    lap("coverage")
    return run
