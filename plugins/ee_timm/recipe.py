"""The training recipe: every value a timm training run depends on, validated, in one place.

A recipe comes from a name, ``<backbone>-<loss>`` (``resnet18-taylor``, ``resnest101-ce``), or
from a YAML file, then takes the command line's explicit overrides. Values no one gave come from
a defaults profile: ``imagenet`` (the seed's ImageNet-sized settings) or ``digits`` (sized for
the embedded 32-pixel digits). The resolved ``Recipe`` is frozen and saved with each run, so a
run can be repeated from its ``recipe.yaml``.

Prediction values (``test_sizes``, ``tta``, ``merge``) are part of the recipe but leave the
weights alone, so they are not hashed into the run id. The default views are the seed's four
test-phase views in the ImageNet profile (``hflip,color_jitter,gauss_noise,rotate``), and
``identity`` alone on the digits, which train without flips (a mirrored 2 is no digit). A
non-empty ``subset`` makes the run a specialist (see ``specialist``). ``recipe_spec.SEED_SOURCES``
says where each of the ImageNet profile's values comes from (a section of the seed, or ours).

The recipe lives in two modules, imported from here by everyone else: ``recipe_spec`` (the
fields, the profiles and the constraints between values) and ``recipe_resolve`` (names, files,
profiles and overrides turned into a ``Recipe``).
"""

from __future__ import annotations

from .recipe_resolve import (
    OVERRIDE_KEYS,
    RECIPE_SUFFIXES,
    apply_overrides,
    check_buildable,
    is_recipe_file,
    load_recipe_file,
    parse_recipe_name,
    resolve_loss,
    resolve_recipe,
)
from .recipe_spec import (
    FIELD_NAMES,
    HINTS,
    INITS,
    KD_FIELDS,
    KD_SOURCES,
    NAME_FIELDS,
    NOISE_ON,
    OTHER_PER_CLASS,
    PRODUCER_NAME,
    PROFILE_NOTES,
    PROFILES,
    REFERENCE_SIZE,
    REFERENCE_TEST_SIZES,
    SEED_LIMIT,
    SUBSET_FIELDS,
    SUBSET_PER_CLASS,
    VFLIP_ON,
    WEIGHT_NEUTRAL,
    Recipe,
    describe_fields,
    recipe_problems,
)

__all__ = [
    "FIELD_NAMES", "HINTS", "INITS", "KD_FIELDS", "KD_SOURCES", "NAME_FIELDS", "NOISE_ON",
    "OTHER_PER_CLASS",
    "OVERRIDE_KEYS", "PRODUCER_NAME", "PROFILES", "PROFILE_NOTES", "RECIPE_SUFFIXES",
    "REFERENCE_SIZE", "REFERENCE_TEST_SIZES", "SEED_LIMIT", "SUBSET_FIELDS", "SUBSET_PER_CLASS",
    "VFLIP_ON", "WEIGHT_NEUTRAL", "Recipe", "apply_overrides", "check_buildable",
    "describe_fields", "is_recipe_file", "load_recipe_file", "parse_recipe_name",
    "recipe_problems", "resolve_loss", "resolve_recipe",
]  # fmt: skip
