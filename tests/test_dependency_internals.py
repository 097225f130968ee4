"""The private names of zarr and torch that ee relies on still do what it relies on.

Each is imported in one module per dependency (``ensemble_engine/zarr_internals.py``,
``plugins/ee_timm/torch_internals.py``); a failure here names the dependency, its installed
version and the file to update.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import zarr
from helpers import op_counter
from zarr.buffer import default_buffer_prototype
from zarr.storage import LocalStore, StorePath

ROOT = Path(__file__).resolve().parents[1]
ZARR, TORCH = "ensemble_engine.zarr_internals", "ee_timm.torch_internals"


def internals(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # the module's own message: dependency, version, file to update
        pytest.fail(str(exc), pytrace=False)


@contextmanager
def relied_on(module: ModuleType, name: str) -> Iterator[None]:
    """A failure inside, as ``<dependency> <version> changed <name>: update <module>``."""
    try:
        yield
    except Exception as exc:  # an AssertionError too: the behaviour changed
        pytest.fail(f"{module.moved(name, 'changed')} ({type(exc).__name__}: {exc})", False)


def test_a_private_name_that_moved_is_an_import_error_naming_version_and_file():
    z = internals(ZARR)
    with pytest.raises(ImportError) as caught:
        z._private("zarr.core.no_such_module", "sync")
    want = f"zarr {zarr.__version__} moved zarr.core.no_such_module.sync: update {z.MODULE}"
    assert str(caught.value) == want
    t = internals(TORCH)
    with pytest.raises(ImportError, match=rf"^torch {re.escape(torch.__version__)} moved "):
        t._private("torch.utils._foreach_utils", "no_such_name")
    assert (ROOT / z.MODULE).is_file() and (ROOT / t.MODULE).is_file()


def test_zarr_sync_runs_a_coroutine_on_zarrs_loop(tmp_path):
    z = internals(ZARR)
    with relied_on(z, "zarr.core.sync.sync"):

        async def listing() -> list[str]:
            await asyncio.sleep(0)
            return [k async for k in store.list_dir("")]

        store = LocalStore(tmp_path)
        zarr.create_group(store, attributes={"a": 1})
        assert z.sync(listing()) == ["zarr.json"]


def test_zarr_metadata_classes_write_the_documents_zarr_reads(tmp_path):
    z = internals(ZARR)
    prototype = default_buffer_prototype()
    with relied_on(z, "zarr.core.group.GroupMetadata"):
        doc = z.GroupMetadata(attributes={"k": [1, 2]}).to_buffer_dict(prototype)["zarr.json"]
        assert json.loads(doc.to_bytes())["attributes"] == {"k": [1, 2]}
    with relied_on(z, "zarr.core.metadata.v3.ArrayV3Metadata"):
        meta = z.ArrayV3Metadata.from_dict(
            {
                "zarr_format": 3,
                "node_type": "array",
                "shape": [5, 3],
                "data_type": "float32",
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2, 3]}},
                "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
                "fill_value": 0,
                "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
                "attributes": {},
                "storage_transformers": [],
            }
        )
        assert meta.encode_chunk_key((2, 0)) == "c/2/0"
        assert meta.to_dict()["codecs"][0]["name"] == "bytes"
        arr_doc = meta.to_buffer_dict(prototype)["zarr.json"]
    with relied_on(z, "zarr.storage._local._put"):
        assert z.atomic_put(tmp_path / "g" / "zarr.json", doc) == len(doc.to_bytes())
        z.atomic_put(tmp_path / "g" / "x" / "zarr.json", arr_doc)
        with pytest.raises(FileExistsError):
            z.atomic_put(tmp_path / "g" / "zarr.json", doc, exclusive=True)
        assert sorted(p.name for p in tmp_path.rglob("*")) == ["g", "x", "zarr.json", "zarr.json"]
    with relied_on(z, "zarr.core.group.GroupMetadata"):  # objects made from them, no reads
        where = StorePath(LocalStore(tmp_path), "g")
        group = zarr.Group(zarr.AsyncGroup(metadata=z.GroupMetadata(), store_path=where))
        arr = zarr.Array(
            zarr.AsyncArray(
                metadata=meta, store_path=where / "x", config={"write_empty_chunks": True}
            )
        )
        arr[:] = np.arange(15, dtype=np.float32).reshape(5, 3)
        again = zarr.open_group(LocalStore(tmp_path), path="g", mode="r")
        assert again.attrs.asdict() == {"k": [1, 2]} and group.path == "g"
        np.testing.assert_array_equal(again["x"][:], arr[:])


def test_zarr_local_store_writes_through_put(tmp_path, monkeypatch):
    """``LocalStore`` writes with the function ee writes ``zarr.json`` files with (and that
    tests/test_kill.py wraps to inject write faults)."""
    z = internals(ZARR)
    with relied_on(z, "zarr.storage._local._put"):
        written: list[str] = []
        real = z._local._put
        monkeypatch.setattr(
            z._local, "_put", lambda path, value, exclusive=False: written.append(path.name)
        )
        z.atomic_put(tmp_path / "a" / "zarr.json", None)
        zarr.create_group(LocalStore(tmp_path / "b"))
        assert written == ["zarr.json", "zarr.json"] and real is not z._local._put


def test_zarr_async_group_is_the_groups_async_side(tmp_path):
    z = internals(ZARR)
    with relied_on(z, "zarr.Group._async_group"):
        group = zarr.create_group(LocalStore(tmp_path))
        group.create_group("s", attributes={"n": 3})
        inner = z.async_group(group)
        assert isinstance(inner, zarr.AsyncGroup) and inner.store_path == group.store_path
        found = z.sync(inner.getitem("s"))
        assert isinstance(found, zarr.AsyncGroup) and found.attrs == {"n": 3}


def test_torch_fused_kernel_devices_are_those_fused_sgd_accepts():
    t = internals(TORCH)
    with relied_on(t, "torch.utils._foreach_utils._get_fused_kernels_supported_devices"):
        devices = t.fused_kernel_devices()
        assert "cuda" in devices and all(isinstance(d, str) for d in devices)
        assert "meta" not in devices
        if "cpu" in devices:
            torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, fused=True)


def test_torch_dispatch_mode_sees_each_op():
    """``TorchDispatchMode`` (torch.utils._python_dispatch), with which tests/helpers.py
    (``op_counter``) and tools/bench_views.py count the kernels a batch of views launches."""
    try:
        with op_counter() as seen:
            torch.ones(3) + 1
        assert seen.ops["aten.add"] == 1, seen.ops
    except Exception as exc:
        pytest.fail(
            f"torch {torch.__version__} changed torch.utils._python_dispatch.TorchDispatchMode: "
            f"update tests/helpers.py and tools/bench_views.py ({exc!r})",
            pytrace=False,
        )


def test_torch_module_load_hook_ee_losses_overrides():
    """``nn.Module._load_from_state_dict(state_dict, prefix, *args)``, which
    plugins/ee_losses/semantic_scale.py overrides to size its buffers before loading them."""
    seen: list[str] = []

    class Sized(torch.nn.Module):
        def _load_from_state_dict(self, state_dict, prefix, *args):
            seen.append(prefix)
            super()._load_from_state_dict(state_dict, prefix, *args)

    try:
        parent = torch.nn.Sequential(Sized())
        parent.load_state_dict({})
        assert seen == ["0."], seen
    except Exception as exc:
        pytest.fail(
            f"torch {torch.__version__} changed torch.nn.Module._load_from_state_dict: "
            f"update plugins/ee_losses/semantic_scale.py ({exc!r})",
            pytrace=False,
        )


PRIVATE = re.compile(
    r"zarr\.core\b|zarr\.storage\._|zarr\.storage import _|\._async_group\b|torch\._|torch\.\w+\._"
)


def test_private_names_are_imported_only_by_the_internals_modules():
    allowed = {
        ROOT / "ensemble_engine/zarr_internals.py",
        ROOT / "plugins/ee_timm/torch_internals.py",
    }
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for folder in ("ensemble_engine", "plugins")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path not in allowed
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if PRIVATE.search(line)
    ]
    assert not found, "import these from the internals modules:\n" + "\n".join(found)
