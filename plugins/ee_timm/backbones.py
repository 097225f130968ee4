"""Backbone names: the seed's short aliases and every model timm knows.

The seed ensemble named its backbones in its own shorthand (``resnest101``, ``tresnetxl``);
``BACKBONE_ALIASES`` maps each to the timm architecture it meant. Any name from
``timm.list_models()`` is accepted as it is. Aliases are matched case-insensitively, timm names
exactly (timm's own registry is case-sensitive).
"""

from __future__ import annotations

import difflib
from functools import cache

from ensemble_engine import RecipeError

BACKBONE_ALIASES: dict[str, str] = {
    "resnest101": "resnest101e",
    "resnest200": "resnest200e",
    "tresnetxl": "tresnet_xl",
    "mixnetxxl": "mixnet_xxl",
    "densenet161": "densenet161",
    "skresnext50": "skresnext50_32x4d",
    "seresnet101": "seresnet101",
    "seresnet152": "seresnet152",
    "seresnext101": "seresnext101_32x4d",
    "rexnet200": "rexnet_200",
    "regnetx120": "regnetx_120",
    "inceptionresnetv2": "inception_resnet_v2",
}

# Smallest square input (pixels) a backbone trains on, where it is above 32 (every other seed
# backbone trains at 32). Measured by forward + backward passes at growing sizes:
# inception_resnet_v2's stem of unpadded stride-2 convolutions leaves a feature map smaller than
# its 3×3 kernels below 75 pixels.
MIN_INPUT_SIZE: dict[str, int] = {"inception_resnet_v2": 75}


@cache
def timm_model_names() -> frozenset[str]:
    """Every architecture name timm can build (no pretrained tags)."""
    import timm

    return frozenset(timm.list_models())


def is_backbone(name: str) -> bool:
    """Whether ``name`` is a seed alias or a timm architecture."""
    return name.lower() in BACKBONE_ALIASES or name in timm_model_names()


def resolve_backbone(name: str) -> str:
    """The timm architecture for a seed alias or a timm name; ``RecipeError`` with close matches."""
    if name.lower() in BACKBONE_ALIASES:
        return BACKBONE_ALIASES[name.lower()]
    if name in timm_model_names():
        return name
    candidates = sorted(set(BACKBONE_ALIASES) | timm_model_names())
    close = difflib.get_close_matches(name.lower(), candidates, n=4, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see `ee recipes` for the aliases"
    raise RecipeError(f"unknown backbone {name!r}: not a seed alias nor a timm model; {hint}")


def min_input_size(backbone: str) -> int | None:
    """The smallest image size (pixels) ``backbone`` trains on, where known to exceed 32."""
    return MIN_INPUT_SIZE.get(backbone)
