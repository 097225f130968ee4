"""The extension points of ensemble-engine.

Every hook hands the plugin a ``register`` callback (as in llm and datasette): call it once per
thing you provide. The host records which plugin registered what, resolves aliases and turns a
duplicate name into an error that names both plugins. Hooks are called with keyword arguments, so
an implementation may accept fewer arguments than its spec.

``register(name, factory, *, description="", aliases=(), **capabilities)``
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    import click

PROJECT = "ensemble_engine"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Register(Protocol):
    def __call__(
        self,
        name: str,
        factory: Any,
        *,
        description: str = "",
        aliases: tuple[str, ...] = (),
        **capabilities: Any,
    ) -> Any: ...


# --- building blocks of producers -------------------------------------------------------------


@hookspec
def register_losses(register: Register) -> None:
    """Register losses: ``factory(**params) -> torch.nn.Module`` with forward(logits, target)."""


@hookspec
def register_datasets(register: Register) -> None:
    """Register datasets: ``factory(root, **params) -> ensemble_engine.data.DatasetSource``."""


@hookspec
def register_tta_views(register: Register) -> None:
    """Register test-time views: ``factory(**params) -> view(images, generator) -> images``."""


# --- things that write predictions ------------------------------------------------------------


@hookspec
def register_producers(register: Register) -> None:
    """Register producers: ``factory() -> ensemble_engine.producer.Producer``."""


@hookspec
def register_combiners(register: Register) -> None:
    """Register combiners: ``factory`` is a ``ensemble_engine.combiner.Combiner`` subclass."""


# --- the command line -------------------------------------------------------------------------


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add click commands or groups to the ``ee`` command line."""
