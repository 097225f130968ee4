"""The producer contract: something that writes predictions into the store.

``ee produce RECIPE`` resolves RECIPE to a producer: a registered producer name, a YAML recipe file
(its ``producer:`` key, default ``timm``), or ``<backbone>-<loss>`` for the built-in timm producer.
A producer reads images through a dataset plugin and writes only through the store API.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
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
    producer replace predictions of the same names.
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


class Producer(ABC):
    """Base class of producer plugins; register a factory returning an instance."""

    @abstractmethod
    def produce(self, request: ProduceRequest) -> list[str]:
        """Run the producer; return the ids of the predictions it wrote."""
