"""``ee demo`` end to end: run the pipeline, then print its tables, headline and next commands."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from ensemble_engine import open_store

from . import tables
from .config import demo_config
from .costs import frontier
from .pipeline import BASE, BUDGETED, FINAL, DemoRun, run_demo
from .shown import frontier_command
from .workers import default_workers


def run_and_show(
    workdir: Path,
    *,
    quick: bool = False,
    seed: int = 0,
    workers: int | None = None,
    console: Console | None = None,
) -> DemoRun:
    """Run the demo in ``workdir`` and print its results to ``console`` (default: stdout)."""
    console = console or Console()
    config = demo_config(quick)
    started = time.perf_counter()
    run = run_demo(
        Path(workdir), config, seed=seed, workers=workers or default_workers(), console=console
    )
    show(run, console)
    total = time.perf_counter() - started
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in run.seconds.items())
    console.print(f"done in {total:.0f} s ({steps})")
    next_steps(run, console)
    return run


def show(run: DemoRun, console: Console) -> None:
    """The seed-style tables, then the one-line headline."""
    store = open_store(run.store_path, "r")
    sizes = list(run.config.test_sizes)
    models = tables.producer_scores(store, sizes)
    for table_id, title in (("I", "Table I: backbones × losses"), ("II", "Table II: one loss")):
        names = {j.name for j in run.config.producer_jobs() if j.table == table_id}
        chosen = [m for m in models if m.name in names]
        if chosen:
            console.print(tables.producers_table(chosen, sizes, f"{title}, top-1 %"))
    console.print(tables.nodes_table(run.nodes, FINAL))
    console.print(f"  $ {frontier_command(run.store_path, 'test')}", style="dim", soft_wrap=True)
    rows = [
        ("best single (val)", run.best["name"]),
        ("budgeted selection", BUDGETED),
        ("stage 2, learned", BASE),
        ("coverage", FINAL),
    ]
    console.print(tables.frontier_table(frontier(run.store_path, "test"), rows))
    console.print(tables.weak_classes_table(store, run.weak, BASE, FINAL))
    console.print(tables.summary(store, models, BASE, FINAL).line())


def next_steps(run: DemoRun, console: Console) -> None:
    workdir = run.workdir
    console.print("next, try:")
    for command, why in (
        (f"ee ls {run.store_path}", "every prediction with its facts and metrics"),
        (f"ee report {run.store_path} --graph {run.graph_path} -o {workdir / 'report.html'}",
         "the HTML report"),
        (f"ee combine {run.graph_path} --plan", "the fusion graph, all cached"),
        (f"ee validate {run.store_path}", "check the store against the format spec"),
    ):  # fmt: skip
        console.print(f"  {command}    [dim]# {why}[/dim]")
