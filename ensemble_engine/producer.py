"""The producer contract: something that writes predictions into the store.

``ee produce RECIPE`` resolves RECIPE to a producer: a registered producer name, a YAML recipe file
(its ``producer:`` key, default ``timm``), or ``<backbone>-<loss>`` for the built-in timm producer.
A producer reads images through a dataset plugin and writes only through the store API.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from .store import PredictionStore


@dataclass
class ProduceRequest:
    """Everything ``ee produce`` hands a producer.

    ``overrides`` holds only the options the user gave explicitly (recipe values win otherwise).
    ``data_dir`` None means the embedded digits. ``subset`` lists class ids for a specialist run
    (class-subset training) or is None. ``run_id`` names the run folder under ``runs_dir`` and
    ``name`` the predictions (each producer picks its own when None); ``force`` lets the
    producer replace predictions of the same names. ``store`` is created on first use where it
    did not exist (``StoreOnFirstUse``): check the recipe and the data before touching it.
    """

    recipe: str
    data_dir: Path | None
    store: PredictionStore
    runs_dir: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    subset: list[str] | None = None
    console: Console | None = None
    run_id: str | None = None
    name: str | None = None
    force: bool = False


class StoreOnFirstUse:
    """A store that does not exist yet, created when a producer first uses it.

    ``ee produce`` hands this to the producer in ``ProduceRequest.store`` when STORE names no
    store yet, so a command refused for a bad recipe or bad data leaves no new empty store
    behind. ``path`` is known without creating anything; any other attribute opens (creates)
    the store with ``opener`` and is looked up on it.
    """

    def __init__(self, path: str, opener: Callable[[str], PredictionStore]) -> None:
        self.path = path
        self._opener = opener
        self._store: PredictionStore | None = None

    def open(self) -> PredictionStore:
        if self._store is None:
            self._store = self._opener(self.path)
        return self._store

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not set yet (unpickling, copying): never open for these
            raise AttributeError(name)
        return getattr(self.open(), name)


class Producer(ABC):
    """Base class of producer plugins; register a factory returning an instance."""

    @abstractmethod
    def produce(self, request: ProduceRequest) -> list[str]:
        """Run the producer; return the ids of the predictions it wrote."""

    def check(self, request: ProduceRequest) -> None:  # noqa: B027 - optional by design
        """Refuse (raise an ``EEError``) a request that cannot run, before processes are started
        for it (``ee produce --nproc N`` calls this, then starts N copies of the command).

        Optional: the default checks nothing, and ``produce`` must check again in any case
        (``torchrun`` may start it directly). It must not write to the store.
        """

    def plan(self, request: ProduceRequest) -> dict[str, Any]:
        """What ``produce(request)`` would do, without doing it (``ee produce RECIPE --plan``).

        Optional: a producer without it is refused ``--plan`` in one line. It runs the checks
        ``produce`` starts with (a request ``produce`` would refuse is refused, ``EEError``), and
        trains nothing, writes nothing, and creates no run folder and no store (``request.store``
        may be a ``StoreOnFirstUse``: read ``.path`` only). It returns JSON-able values:

        - ``recipe``: field → resolved value; ``sources``: field → where the value came from
          (e.g. ``recipe file r.yaml``, ``profile digits``, ``default``, ``command line --lr``);
        - ``run_id``: the run it would start or resume; ``predictions``: the ids it would
          write, ``<name>/<split>``; ``notes``: lines to show first (optional);
        - any other key the producer finds useful (shown as it comes).
        """
        raise NotImplementedError(f"{type(self).__name__} has no plan()")
