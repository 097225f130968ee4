"""The core commands end to end on the digits data, through click's CliRunner."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from ensemble_engine.store import open_store


@pytest.fixture
def store_path(tmp_path, digits_dir, run_cli):
    path = tmp_path / "ee.zarr"
    res = run_cli("store", "init", path, "--data", digits_dir)
    assert res.exit_code == 0, res.output
    return path


def test_version_and_help(run_cli):
    res = run_cli("--version")
    assert res.exit_code == 0 and res.output.startswith("ee, version ")
    res = run_cli("--help")
    for command in ("ls", "validate", "import", "export", "store", "plugins", "data"):
        assert command in res.output


def test_data_digits_writes_the_vipriors_layout(tmp_path, run_cli):
    res = run_cli(
        "data",
        "digits",
        tmp_path / "d",
        "--train-per-class",
        "5",
        "--val-per-class",
        "3",
        "--seed",
        "1",
    )
    assert res.exit_code == 0, res.output
    assert "train 50, val 30, test 1717" in res.output
    assert len(list((tmp_path / "d" / "test" / "imgs").iterdir())) == 1717
    assert sorted(p.name for p in (tmp_path / "d" / "train").iterdir()) == [
        str(i) for i in range(10)
    ]


def test_store_init_registers_splits_in_folder_order(store_path, digits_dir):
    st = open_store(store_path, "r")
    assert st.classes == [str(i) for i in range(10)]
    assert st.split_names() == ["test", "train", "val"]
    val = st.split("val")
    assert val.n == 500 and (val.labels >= 0).all()
    assert val.sample_ids[0] == "0/" + sorted(p.name for p in (digits_dir / "val/0").iterdir())[0]
    test = st.split("test")
    with open(digits_dir / "test" / "labels.csv") as fh:
        truth = {r["image"]: int(r["label"]) for r in csv.DictReader(fh)}
    assert {sid: int(lab) for sid, lab in zip(test.sample_ids, test.labels, strict=True)} == truth


def _oracle_logits(st, split, wrong_every=7):
    y = st.split(split).labels
    logits = np.eye(10, dtype=np.float32)[y] * 4
    logits[::wrong_every] = np.roll(logits[::wrong_every], 1, axis=1)
    return logits


def test_import_npy_ls_export_validate(tmp_path, store_path, run_cli):
    st = open_store(store_path, "r")
    np.save(tmp_path / "val.npy", _oracle_logits(st, "val"))
    res = run_cli("import", store_path, tmp_path / "val.npy", "--split", "val", "--id", "oracle")
    assert res.exit_code == 0, res.output
    expected_top1 = 1 - len(range(0, 500, 7)) / 500
    assert f"top1 {expected_top1:.4f}" in res.output

    res = run_cli("ls", store_path, "--json")
    data = json.loads(res.output)
    (row,) = data["predictions"]
    assert row["id"] == "oracle/val" and row["kind"] == "logits" and row["shape"] == [500, 10]
    assert row["metrics"]["top1"] == pytest.approx(expected_top1)
    assert row["source"] == {"type": "import", "plugin": "ee"}
    assert data["splits"] == {"test": 797, "train": 500, "val": 500}
    res = run_cli("ls", store_path)
    assert "oracle/val" in res.output and f"{expected_top1:.4f}" in res.output

    res = run_cli("export", store_path, "oracle/val")
    assert res.exit_code == 0
    rows = list(csv.reader(io.StringIO(res.stdout)))
    assert rows[0] == ["Image IDs", "Predictions"]
    assert len(rows) == 501
    val = st.split("val")
    assert rows[1] == [val.sample_ids[0].split("/")[-1], str((val.labels[0] + 1) % 10)]
    out = tmp_path / "sub.csv"
    res = run_cli("export", store_path, "oracle/val", "--top-k", "3", "-o", out)
    assert res.exit_code == 0
    first = list(csv.reader(out.open()))[2]
    assert len(first[1].split(" ")) == 3

    res = run_cli("validate", store_path)
    assert res.exit_code == 0, res.output


def test_import_timm_inference_csv_matches_by_file_name(tmp_path, store_path, run_cli):
    st = open_store(store_path, "r")
    logits = _oracle_logits(st, "test", wrong_every=5)
    names = [sid.split("/")[-1] for sid in st.split("test").sample_ids]
    order = np.random.default_rng(0).permutation(len(names))  # timm's order differs
    path = tmp_path / "resnet18-32.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filename"] + [f"logit_{k}" for k in range(10)])
        for i in order:
            writer.writerow([names[i]] + [f"{v:.4f}" for v in logits[i]])
    res = run_cli("import", store_path, path, "--split", "test", "--id", "timm-r18")
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(open_store(store_path, "r").read("timm-r18", "test"), logits)


def test_import_labels_npy(tmp_path, store_path, run_cli):
    st = open_store(store_path, "r")
    np.save(tmp_path / "lab.npy", st.split("val").labels)
    res = run_cli("import", store_path, tmp_path / "lab.npy", "--split", "val", "--id", "truth")
    assert res.exit_code == 0, res.output
    assert open_store(store_path, "r").get("truth", "val").metrics["top1"] == 1.0


def test_plugins_json_lists_builtins_and_what_they_register(run_cli):
    res = run_cli("plugins", "--json")
    infos = {p["name"]: p for p in json.loads(res.output)}
    assert infos["ee_data"]["builtin"] is True
    assert "digits" in infos["ee_data"]["registers"]["datasets"]
    assert infos["ee_data"]["registers"]["commands"] == ["data"]
    assert "taylor_ce" in infos["ee_losses"]["registers"]["losses"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ls", "{tmp}/missing.zarr"], "no prediction store at"),
        (["export", "{store}", "nope"], "invalid prediction id 'nope'"),
        (["export", "{store}", "nope/val"], "no complete prediction nope/val"),
        (
            ["import", "{store}", "{npy}", "--split", "val", "--id", "../up"],
            "invalid prediction name",
        ),
        (["import", "{store}", "{npy}", "--split", "train", "--id", "x"], "needs [500, 10]"),
        (
            ["import", "{store}", "{npy}", "--split", "holdout", "--id", "x"],
            "has no split 'holdout'",
        ),
        (["import", "{store}", "{npy}", "--split", "val", "--id", "dup"], "already exists"),
        (["store", "init", "{store}", "--data", "{tmp}/empty"], "empty"),
    ],
    ids=[
        "missing store",
        "malformed id",
        "unknown prediction",
        "escaping name",
        "wrong shape",
        "unknown split",
        "duplicate id",
        "empty data folder",
    ],
)
def test_user_errors_are_one_line_exit_2_and_write_nothing(
    tmp_path, store_path, run_cli, args, message
):
    np.save(tmp_path / "bad.npy", np.zeros((500, 9), np.float32))
    np.save(tmp_path / "ok.npy", np.zeros((500, 10), np.float32))
    assert (
        run_cli(
            "import", store_path, tmp_path / "ok.npy", "--split", "val", "--id", "dup"
        ).exit_code
        == 0
    )
    (tmp_path / "empty").mkdir()
    npy = tmp_path / ("ok.npy" if "dup" in args or "../up" in args else "bad.npy")
    before = sorted(p.relative_to(store_path) for p in store_path.rglob("*"))
    fmt = {"tmp": tmp_path, "store": store_path, "npy": npy}
    res = run_cli(*[a.format(**fmt) for a in args])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert "Traceback" not in res.output
    assert sorted(p.relative_to(store_path) for p in store_path.rglob("*")) == before


def test_debug_shows_the_traceback(tmp_path, run_cli):
    res = run_cli("--debug", "ls", tmp_path / "missing.zarr")
    assert res.exit_code != 0
    assert res.exception is not None and "no prediction store" in str(res.exception)


@pytest.mark.parametrize("args", [["--version"], ["ls", "missing.zarr"]])
def test_the_command_line_freezes_what_is_alive_before_the_interpreter_exits(tmp_path, args):
    # gc.freeze spares the interpreter's last collections a walk over everything imported
    # (over a second after torch and timm); it must happen on success and on error alike
    code = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: print('frozen', gc.get_freeze_count()))\n"
        "from ensemble_engine.cli import main\n"
        f"sys.argv = ['ee', *{args!r}]\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == (0 if args == ["--version"] else 2), done.stderr
    frozen = [line for line in done.stdout.splitlines() if line.startswith("frozen")]
    assert len(frozen) == 1 and int(frozen[0].split()[1]) > 1000, done.stdout
