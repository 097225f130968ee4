"""A warning a command prints is one line (``warning: …``), as an error is; ``--debug`` keeps
Python's format (file, line, category and the source line), which names ee's internals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import small_digits


def _store_init(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    ee = Path(sys.executable).parent / "ee"
    return subprocess.run(
        [str(ee), *extra, "store", "init", str(tmp_path / "s.zarr"), "--data", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "default"},
    )


def test_a_skipped_image_is_one_warning_line(tmp_path):
    data = small_digits(tmp_path / "d", train_per_class=2, val_per_class=1, test_images=3)
    damaged = sorted((data / "train" / "3").iterdir())[0]
    damaged.write_bytes(damaged.read_bytes()[:40])  # a truncated PNG: skipped with a warning
    res = _store_init(tmp_path)
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: "), res.stderr
    assert damaged.name in lines[0] and "Warning:" not in lines[0]

    debug = _store_init(tmp_path, "--debug")  # the same data again: the warning in full
    assert debug.returncode == 0, debug.stderr
    assert "SkippedFilesWarning" in debug.stderr and ".py:" in debug.stderr
