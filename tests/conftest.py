"""Shared fixtures: an isolated cache and plugin set, the digits data, a CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests see the built-in plugins only, whatever else is installed on the machine; tests of
# third-party loading set EE_PLUGINS themselves.
os.environ.setdefault("EE_PLUGINS", "")


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Generated data goes to a per-session cache, never the user's home."""
    cache = tmp_path_factory.mktemp("ee-cache")
    old = os.environ.get("EE_CACHE_DIR")
    os.environ["EE_CACHE_DIR"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("EE_CACHE_DIR", None)
    else:
        os.environ["EE_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn's digits written once per session in the VIPriors layout (50/50 per class)."""
    from ee_data.digits import write_digits

    root = tmp_path_factory.mktemp("data") / "digits"
    write_digits(root)
    return root


@pytest.fixture
def run_cli():
    """Invoke the ``ee`` app in-process; returns the click Result (stdout and stderr apart)."""
    from click.testing import CliRunner

    from ensemble_engine.cli import build_cli

    def invoke(*args: str, input: str | None = None):
        runner = CliRunner()
        return runner.invoke(
            build_cli(), [str(a) for a in args], input=input, catch_exceptions=True
        )

    return invoke
