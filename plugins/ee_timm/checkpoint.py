"""Run-folder files: checkpoints, random-number states, the per-epoch summary.

Checkpoints hold only tensors, state dicts and plain Python values, so they load with
``torch.load(weights_only=True)``, which executes no pickled code. Every file is written to a
temporary name in the same folder and renamed into place: an interrupted write never leaves a
half checkpoint behind, and ``last.pth`` is always a state the run can resume from. A process
killed mid-write (``kill -9``) leaves its temporary file, as large as the checkpoint; the next
write into the folder removes the temporary files of writers that are gone. A temporary name
carries its writer's pid and host (``.last.pth.tmp-<pid>@<host>``), so a folder on a shared
file system never loses the file of a writer on another machine.
"""

from __future__ import annotations

import csv
import io
import os
import pickle
import random
import socket
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ensemble_engine import RecipeError

CHECKPOINT_FORMAT = "ee_timm.checkpoint"
CHECKPOINT_VERSION = 1
SUMMARY_COLUMNS = (
    "epoch", "train_loss", "lr", "val_top1", "val_top5", "val_loss", "time_s", "img_s",
)  # fmt: skip
HOST = socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files in ``folder`` left by writers that were killed; returns them.

    Only this host's writers are judged (a pid means nothing on another machine), and a live
    writer's file is left alone: it is about to be renamed.
    """
    removed = []
    for tmp in folder.glob(".*.tmp-*"):
        pid, _, host = tmp.name.rpartition(".tmp-")[2].partition("@")
        if host != HOST or not pid.isdigit() or int(pid) == os.getpid():
            continue
        if not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _write_atomic(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}@{HOST}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` ``state`` (with format tags) to ``path`` atomically."""
    tagged = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    _write_atomic(path, lambda tmp: torch.save(tagged, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by ``save_checkpoint``, loaded to CPU with ``weights_only=True``."""
    return torch.load(path, map_location="cpu", weights_only=True)


# What torch.load raises for a file that is not a whole torch checkpoint (a cut-off zip, bytes
# that are no pickle, a pickle of objects weights_only refuses).
_DAMAGED = (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, struct.error)


def read_resumable(path: Path, *, mmap: bool = False) -> dict[str, Any]:
    """``last.pth`` for ``--resume``, or a one-line ``RecipeError`` naming the file and the fix.

    An empty, truncated or foreign file (or one without the format tag) is refused; nothing in
    it is executed (``weights_only``). ``mmap=True`` maps the tensors instead of reading them:
    a cheap check before anything is written.
    """
    path = Path(path)
    fix = f"start the run again without --resume (remove {path.parent} or give another --run-id)"
    if (path.parent / "best.pth").is_file() and path.name != "best.pth":
        fix += f", or predict with its best.pth (ee predict {path.parent})"
    try:
        if path.stat().st_size == 0:
            raise RecipeError(
                f"{path} is empty (its write never finished): nothing to resume; {fix}"
            )
        with warnings.catch_warnings():  # torch warns before it refuses a foreign pickle
            warnings.simplefilter("ignore")
            saved = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except PermissionError as exc:
        raise RecipeError(f"cannot read {path} ({exc.strerror}); check its permissions") from None
    except pickle.UnpicklingError:
        raise RecipeError(
            f"{path} is not a checkpoint written by `ee produce` (it holds objects other than "
            f"tensors and plain values, which ee never loads); {fix}"
        ) from None
    except _DAMAGED:
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"  # how every torch.save file starts
        what = "is truncated or damaged" if zipped else "is not a torch checkpoint"
        raise RecipeError(f"{path} {what} and cannot be read; {fix}") from None
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        raise RecipeError(
            f"{path} is not a checkpoint written by `ee produce` (no {CHECKPOINT_FORMAT} tag); "
            f"{fix}"
        )
    return saved


def write_text_atomic(path: Path, text: str) -> None:
    _write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_recipe(path: Path, recipe: dict[str, Any]) -> None:
    """The resolved recipe as YAML (like timm's ``args.yaml``); ``ee produce`` can re-run it."""
    write_text_atomic(path, yaml.safe_dump(recipe, sort_keys=False))


def read_recipe(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def write_summary(path: Path, rows: list[dict[str, Any]]) -> None:
    """All epochs so far as CSV; rewritten whole, so it always matches ``last.pth``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in SUMMARY_COLUMNS})
    write_text_atomic(path, buffer.getvalue())


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if value != value else f"{value:.6g}"  # NaN: no validation this epoch
    return value


# --- random-number states ---------------------------------------------------------------------


def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    """Every random state a training epoch draws from, as tensors and plain values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "internal": list(internal), "gauss": py_gauss},
        "loader": generator.get_state(),
    }


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    """Put back the random states of ``capture_rng``."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    generator.set_state(state["loader"])


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's and Python's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
