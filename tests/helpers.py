"""Shared test data and checks: small digits trees, the "nothing written" snapshot,
dsb_focal's class weights recomputed from its pools (numpy, from the definition), and a counter
of the aten ops torch dispatches (what a GPU would launch)."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np


def small_digits(
    root: Path, *, train_per_class: int, val_per_class: int, test_images: int, size: int = 32
) -> Path:
    """The digits tree at ``root`` with its test split cut to the first ``test_images`` images
    (file and ``labels.csv`` row), so that tests which predict it stay fast."""
    from ee_data import write_digits

    write_digits(root, train_per_class=train_per_class, val_per_class=val_per_class, size=size)
    images = sorted((root / "test" / "imgs").iterdir())
    for path in images[test_images:]:
        path.unlink()
    kept = {p.name for p in images[:test_images]}
    labels = root / "test" / "labels.csv"
    header, *rows = labels.read_text().splitlines()
    labels.write_text("\n".join([header, *(r for r in rows if r.split(",")[0] in kept)]) + "\n")
    return root


def snapshot(*roots: Path) -> dict[str, str]:
    """Every path under ``roots`` with a hash of its bytes; lock folders must end up empty."""
    out = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            rel = f"{root.name}/{path.relative_to(root).as_posix()}"
            if path.parent.name.endswith(".locks") and path.parent.name.startswith("."):
                out[rel] = "lock file left behind"
            elif path.is_dir():
                if not (path.name.startswith(".") and path.name.endswith(".locks")):
                    out[rel] = "dir"
            elif path.is_file() and os.access(path, os.R_OK) and path.stat().st_mode & 0o444:
                out[rel] = hashlib.sha1(path.read_bytes()).hexdigest()
            else:
                out[rel] = "unreadable"
    return out


def numpy_dsb_weights(pool: np.ndarray, count: np.ndarray) -> np.ndarray:
    """1/S_c over their mean, S_c = 1/2 log2 det(I_p + (p/m) Zc^T Zc) for the m pooled rows Z
    of class c, centred (Zc): from the definition, on the p x p matrix, in float64."""
    scales = []
    for c, m in enumerate(count):
        z = pool[c, :m].astype(np.float64)
        zc = z - z.mean(axis=0)
        p = z.shape[1]
        sign, logdet = np.linalg.slogdet(np.eye(p) + (p / m) * zc.T @ zc)
        assert sign > 0
        scales.append(0.5 * logdet / math.log(2))
    inverse = 1 / np.array(scales)
    return inverse / inverse.mean()


def op_counter():
    """A context manager counting, by name, the aten ops torch dispatches inside it (``.ops``).

    torch's ``TorchDispatchMode`` is private (torch.utils._python_dispatch); it is imported here
    only when a test counts ops (tests/test_dependency_internals.py says when it moves)."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    class CountOps(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: Counter[str] = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    return CountOps()
