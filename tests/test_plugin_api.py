"""The plugin API: what ``ensemble_engine`` exports is what schemas/plugin-api.md documents."""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import ensemble_engine

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "schemas" / "plugin-api.md"


def documented_names() -> list[str]:
    """The names in the first column of the page's tables (one row per name)."""
    text = PAGE.read_text(encoding="utf-8")
    return re.findall(r"^\| `([A-Za-z_][A-Za-z0-9_]*)` \|", text, re.M)


def test_every_exported_name_is_documented_and_nothing_else():
    names = documented_names()
    assert len(names) == len(set(names)), "a name is documented twice"
    exported = set(ensemble_engine.__all__)
    assert sorted(exported - set(names)) == [], "exported but not on schemas/plugin-api.md"
    assert sorted(set(names) - exported) == [], "on schemas/plugin-api.md but not exported"


def test_every_exported_name_resolves():
    for name in ensemble_engine.__all__:
        assert getattr(ensemble_engine, name) is not None, name
    assert set(dir(ensemble_engine)) >= set(ensemble_engine.__all__)


def test_no_exported_name_is_shadowed_by_a_submodule():
    """Importing ``ensemble_engine.X`` sets attribute X on the package: no export may be named
    like a submodule, or importing that module would replace the export."""
    submodules = {m.name for m in pkgutil.iter_modules(ensemble_engine.__path__)}
    assert submodules & set(ensemble_engine.__all__) == set()


def test_import_stays_light():
    """The package imports the errors and hook markers only; the rest is imported on first use."""
    code = (
        "import sys, ensemble_engine; "
        "print(sorted(m for m in ('torch', 'zarr', 'numpy', 'PIL') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_readme_links_the_page():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "schemas/plugin-api.md" in text
