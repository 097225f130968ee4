"""``-o`` of every command: a special file is written, never replaced; a symlink stays a link;
``-`` is stdout; a failed write is one line, exit 2, and leaves the old file as it was."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

from ensemble_engine import outputs
from ensemble_engine.outputs import OutputError, write_output
from ensemble_engine.store import open_store

CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("outputs") / "s.zarr"
    st = open_store(path, "w")
    st.set_classes(CLASSES)
    rng = np.random.default_rng(3)
    st.add_split("val", [f"v{i}.png" for i in range(12)], rng.integers(0, 3, 12))
    meta = {"source": {"type": "producer", "plugin": "test"}, "loss": "ce"}
    st.write_prediction("m1", "val", kind="logits", scores=rng.normal(size=(12, 3)), meta=meta)
    return path


def commands(store: Path) -> dict[str, list[str]]:
    """Each command with ``-o``, ready for the path to be appended."""
    return {
        "export": ["export", str(store), "m1/val", "-o"],
        "weak-classes": ["weak-classes", str(store), "m1", "--threshold", "1", "-o"],
        "report": ["report", str(store), "-o"],
    }


COMMANDS = ["export", "weak-classes", "report"]


def expected(run_cli, store: Path, name: str, tmp_path: Path) -> bytes:
    """What the command writes to a plain new file."""
    plain = tmp_path / f"plain-{name}"
    res = run_cli(*commands(store)[name], plain)
    assert res.exit_code == 0, res.output
    return plain.read_bytes()


@pytest.fixture
def full(tmp_path) -> Path:
    """A link to /dev/full: a regression replaces the link, never the machine's device node."""
    if not stat.S_ISCHR(os.stat("/dev/full").st_mode if os.path.exists("/dev/full") else 0):
        pytest.skip("needs /dev/full")
    link = tmp_path / "full"
    link.symlink_to("/dev/full")
    return link


@pytest.mark.parametrize("name", COMMANDS)
def test_a_full_device_is_a_write_error_and_stays_a_device(store, run_cli, full, name):
    res = run_cli(*commands(store)[name], full)
    assert "Traceback" not in res.output
    assert res.exit_code == 2, res.output
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"Error: cannot write {full}: No space left on device")
    assert "free some space" in lines[0] and "-o" in lines[0]
    assert full.is_symlink() and stat.S_ISCHR(full.stat().st_mode)  # neither was replaced
    assert "wrote" not in res.output


@pytest.mark.parametrize("name", COMMANDS)
def test_a_fifo_is_written_not_replaced(store, run_cli, tmp_path, name):
    want = expected(run_cli, store, name, tmp_path)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    res = run_cli(*commands(store)[name], fifo)
    reader.join(timeout=30)
    assert res.exit_code == 0, res.output
    assert got == [want]
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"plain-{name}", "pipe"])


@pytest.mark.parametrize("name", COMMANDS)
def test_a_symlink_stays_a_link_and_its_target_is_written(store, run_cli, tmp_path, name):
    want = expected(run_cli, store, name, tmp_path)
    target = tmp_path / "real" / "out.txt"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    res = run_cli(*commands(store)[name], link)
    assert res.exit_code == 0, res.output
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == want
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]  # no temp file left


@pytest.mark.parametrize("name", COMMANDS)
def test_dash_is_stdout(store, run_cli, tmp_path, name):
    want = expected(run_cli, store, name, tmp_path)
    res = run_cli(*commands(store)[name], "-")
    assert res.exit_code == 0, res.output
    assert res.stdout_bytes == want
    assert not (tmp_path / "-").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"plain-{name}"]


def test_a_regular_file_is_replaced_whole_and_keeps_its_mode(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text("old")
    path.chmod(0o640)
    write_output(path, "new\n")
    assert path.read_text() == "new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "out.csv"
    path.write_text("old")

    def full(fd):
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr(outputs.os, "fsync", full)
    with pytest.raises(OutputError, match="cannot write .*out.csv: File too large; raise the"):
        write_output(path, "new\n")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_a_dangling_symlink_creates_its_target(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "made.txt")
    write_output(link, b"bytes")
    assert link.is_symlink() and (tmp_path / "made.txt").read_bytes() == b"bytes"
