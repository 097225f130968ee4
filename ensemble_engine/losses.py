"""Building losses by name from whichever plugin registered them."""

from __future__ import annotations

from typing import Any

from .errors import RecipeError
from .plugins import get_host


def create_loss(name: str, **params: Any):
    """Build the loss registered as ``name`` (or an alias) with ``params``.

    The result is a ``torch.nn.Module`` whose ``forward(logits, target)`` accepts integer targets
    [N] or soft targets [N, C] and honours ``reduction`` in {"mean", "sum", "none"}.
    """
    entry = get_host().losses.get(name)
    try:
        return entry.factory(**params)
    except TypeError as exc:
        takes = _parameters(entry.factory)
        known = f"it takes {', '.join(takes)}" if takes else "it takes none"
        raise RecipeError(
            f"loss {entry.name!r} does not accept parameters {sorted(params)} ({exc}); "
            f"{known} (see `ee plugins`)"
        ) from None


def _parameters(factory: Any) -> list[str]:
    """The keyword parameters a loss factory (a class or a function) takes, for messages."""
    import inspect

    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in signature.parameters.values() if p.kind in kinds]


def list_losses(pattern: str = "*") -> list[str]:
    return [e.name for e in get_host().losses.list(pattern)]
