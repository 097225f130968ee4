"""A write refused by the system for any reason is one line and exit 2, and nothing is left
half-written: here the file size limit (``ulimit -f``), which fails writes with EFBIG.

Real processes under a real limit: Python ignores SIGXFSZ, so the write fails with EFBIG instead
of the process being killed, and ``ee`` must turn that into its one-line error.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import snapshot

from ensemble_engine.store import open_store

LIMIT = 4096  # bytes: the metadata files fit, a chunk of 300 × 10 scores does not
GRAPH = """\
version: 1
fit: val
apply: val
nodes:
  soft:
    combiner: soft_vote
    inputs: [m1, m2]
output: soft
"""


@pytest.fixture
def root(tmp_path) -> Path:
    st = open_store(tmp_path / "s.zarr", "w")
    st.set_classes([f"c{i}" for i in range(10)])
    rng = np.random.default_rng(7)
    st.add_split("val", [f"v{i}.png" for i in range(300)], rng.integers(0, 10, 300))
    for name in ("m1", "m2"):
        st.write_prediction(name, "val", kind="logits", scores=rng.normal(size=(300, 10)))
    np.save(tmp_path / "x.npy", rng.normal(size=(300, 10)).astype(np.float32))
    (tmp_path / "graph.yaml").write_text(GRAPH, "utf-8")
    return tmp_path


def limited(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))

    return subprocess.run(
        [sys.executable, "-m", "ensemble_engine", *args],
        cwd=cwd,
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "args",
    [
        ("import", "s.zarr", "x.npy", "--split", "val", "--id", "x"),
        ("combine", "graph.yaml", "--store", "s.zarr"),
    ],
    ids=["import", "combine"],
)
def test_a_file_size_limit_is_one_line_and_writes_nothing(root, args):
    before = snapshot(root)
    res = limited(*args, cwd=root)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("Error: File too large (EFBIG)"), lines[0]
    assert "ulimit -f" in lines[0]
    assert snapshot(root) == before
