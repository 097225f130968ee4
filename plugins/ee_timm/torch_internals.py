"""torch's private names the timm producer uses, imported here and nowhere else.

Underscore modules of torch may change in any release. ``tests/test_dependency_internals.py``
checks what ee relies on from each; if a torch release moves one, importing this module raises
an ImportError naming the torch version and this file (``builders.has_fused_kernels`` then
steps without the fused kernel, as it did before torch had one).
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

MODULE = "plugins/ee_timm/torch_internals.py"


def moved(name: str, how: str = "moved") -> str:
    """The message for a private name that torch moved (or, with ``how``, changed)."""
    return f"torch {torch.__version__} {how} {name}: update {MODULE}"


def _private(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ImportError(moved(f"{module}.{name}")) from exc


# ``fused_kernel_devices()``: the device types ("cpu", "cuda", ...) with fused optimiser kernels,
# the list torch's optimisers check ``fused=True`` against; ``builders.has_fused_kernels`` asks
# it before building SGD fused. Public alternative: none (building ``torch.optim.SGD(...,
# fused=True)`` raises RuntimeError on a device without the kernel, after checking the params).
fused_kernel_devices = _private(
    "torch.utils._foreach_utils", "_get_fused_kernels_supported_devices"
)
