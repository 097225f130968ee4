"""Built-in producer plugin: train timm backbones with registered losses (``ee produce``).

Modules: ``recipe`` (names, YAML files, defaults, overrides), ``backbones`` (the seed's
aliases), ``transforms`` (augmentation), ``train`` (the loop and run folder), ``specialist``
(class-subset runs), ``prediction`` (a run's predictions into the store), ``producer``, and
``commands`` (``ee recipes``, ``ee predict``). The producer is built lazily, so loading the
plugin does not import timm.
"""

from __future__ import annotations

from ensemble_engine import Register, hookimpl

__all__ = ["register_commands", "register_producers", "timm_producer"]


def timm_producer():
    """The ``timm`` producer (imported on first use: timm and torchvision load slowly)."""
    from .producer import TimmProducer

    return TimmProducer()


@hookimpl
def register_producers(register: Register) -> None:
    register(
        "timm",
        timm_producer,
        description="train a timm backbone with a registered loss: ee produce <backbone>-<loss>",
    )


@hookimpl
def register_commands(cli) -> None:
    from .commands import predict_command, recipes_command

    cli.add_command(recipes_command)
    cli.add_command(predict_command)
