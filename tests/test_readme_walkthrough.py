"""The README's walkthrough ("The seed's pipeline on your own data"), run as printed.

The bash block is read from README.md itself, so the README cannot drift from what works. Only
what cannot run here is swapped: the data folder for a small digits tree, the seed's backbones
for tiny timm test models, CUDA for the CPU, and one short epoch at 16 px added to every
`ee produce`. Every other word of every line runs as a user would paste it.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import small_digits

from ensemble_engine.store import open_store

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "### The seed's pipeline on your own data"
# What a 2-core CI machine cannot run, and what runs in its place.
BACKBONES = {
    "resnest101": "test_resnet",
    "tresnetxl": "test_efficientnet",
    "seresnext101": "resnet10t",
}
TINY = "--epochs 1 --img-size 16 --test-sizes 16 --batch-size 32 --workers 0"


def walkthrough_block() -> str:
    text = README.read_text(encoding="utf-8")
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match is not None, "the walkthrough section has no bash block"
    return match.group(1)


def adapted(block: str, data: Path) -> str:
    """The block with the swaps of the module docstring, and nothing else changed."""
    out = []
    for line in block.splitlines():
        command, sep, comment = line.partition("  #")
        command = command.replace("./vipriors", str(data)).replace("--device cuda", "--device cpu")
        for seed_name, tiny in BACKBONES.items():
            command = re.sub(rf"\b{seed_name}\b", tiny, command)
        if re.search(r"\bee produce\b", command):
            command = command.rstrip() + " " + TINY
        out.append(command + sep + comment)
    return "\n".join(out) + "\n"


def test_the_block_is_the_seed_pipeline_with_a_held_out_fusion_split():
    block = walkthrough_block()
    assert "--holdout" in block and "--fit holdout" in block  # the README shows the seed's split
    assert block.count("ee combine vipriors2021") == 2
    assert "--output stage2" in block and "--subset weak.txt" in block


@pytest.mark.slow
def test_the_readme_walkthrough_runs_as_printed(tmp_path):
    data = small_digits(
        tmp_path / "vipriors", train_per_class=8, val_per_class=6, test_images=40, size=16
    )
    script = adapted(walkthrough_block(), data)
    bin_dir = str(Path(sys.executable).parent)  # where pip put `ee`
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, f"{script}\n--- stderr ---\n{proc.stderr[-4000:]}"

    store = open_store(tmp_path / "vip.zarr", "r")
    assert "holdout" in store.split_names()
    final = store.get("final", "test")
    assert final.attrs["source"]["type"] == "combiner"
    assert store.exists("final", "holdout") and not store.exists("final", "val")
    specialists = [p for p in store.list("cov-*", split="holdout")]
    assert specialists and all(p.attrs["loss"] == "dsb_focal" for p in specialists)
    with open(tmp_path / "submission.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["Image IDs", "Predictions"]
    assert len(rows) - 1 == store.split("test").n == 40
