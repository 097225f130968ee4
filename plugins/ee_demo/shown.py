"""The command a user types for each step the demo runs, printed as the demo runs it.

The demo calls the producer and the graph through the Python API the commands are thin over
(training runs side by side in worker processes); these lines are the same steps as commands,
to copy and re-run on the demo's work folder: ``ee produce … --plan`` resolves to the demo run's
own run id, ``ee weak-classes`` writes the same ``weak.txt``, and ``ee combine`` finds every
node cached.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from .workers import TrainTask

WEAK_FILE = "weak.txt"  # the class list the specialists train on, as `ee weak-classes -o` writes


def _value(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def produce_command(task: TrainTask, weak_file: Path | None = None) -> str:
    """``ee produce`` with the demo task's recipe, folders, name and overrides."""
    words = [
        "ee", "produce", task.recipe,
        "--data", str(task.data_dir),
        "--store", task.store,
        "--runs-dir", str(task.runs_dir),
        "--name", task.name,
    ]  # fmt: skip
    for key, value in task.overrides.items():
        if key == "set":
            for field, v in value.items():
                words += ["--set", f"{field}={_value(v)}"]
        else:
            words += ["--" + key.replace("_", "-"), _value(value)]  # click's option names
    if task.subset:
        if weak_file is None:
            raise ValueError("a specialist's command needs the class-list file")
        words += ["--subset", str(weak_file)]
    return shlex.join(words)


def combine_command(graph: Path, output: str | None = None) -> str:
    return shlex.join(["ee", "combine", str(graph), *(["--output", output] if output else [])])


def weak_classes_command(
    store: Path, base: str, threshold: float, max_k: int, min_k: int, out: Path
) -> str:
    return shlex.join(
        [
            "ee", "weak-classes", str(store), base, "--split", "val",
            "--threshold", f"{threshold:g}", "--max", str(max_k), "--min", str(min_k),
            "-o", str(out),
        ]
    )  # fmt: skip


def frontier_command(store: Path, split: str) -> str:
    return shlex.join(["ee", "frontier", str(store), "--split", split])
