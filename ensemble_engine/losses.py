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
        raise RecipeError(
            f"loss {entry.name!r} does not accept parameters {sorted(params)}: {exc}"
        ) from None


def list_losses(pattern: str = "*") -> list[str]:
    return [e.name for e in get_host().losses.list(pattern)]
