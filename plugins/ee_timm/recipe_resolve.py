"""Where a recipe's values come from: a name or a YAML file, a defaults profile, the overrides.

``resolve_recipe`` is the one way in. Everything it refuses is a ``RecipeError`` with a one-line
message naming the value and the fix, whatever the input (a file that is not UTF-8 or not YAML,
keys that are not text, a ``--set`` value that is not YAML): ``ee produce`` must fail before it
writes anything, never with a traceback, and never after a long training run. That is also why
``check_buildable`` builds the loss, the augmentation policy and the TTA views once up front.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ensemble_engine import PluginError, RecipeError, StrictYAMLError, load_yaml

from .backbones import min_input_size, resolve_backbone
from .fields import coerce
from .recipe_spec import (
    FIELD_NAMES,
    HINTS,
    NAME_FIELDS,
    NOISE_ON,
    PRODUCER_NAME,
    PROFILE_VALUES,
    PROFILES,
    REFERENCE_SIZE,
    REFERENCE_TEST_SIZES,
    VFLIP_ON,
    Recipe,
)

RECIPE_SUFFIXES = (".yaml", ".yml")
# Options of ``ee produce`` and the recipe field each sets; ``vflip``/``noise`` are switches.
OVERRIDE_KEYS = (
    "epochs", "batch_size", "lr", "img_size", "mixup", "cutmix", "aa", "vflip", "noise", "seed",
    "device", "workers", "amp", "ema", "loss_params", "test_sizes", "tta", "init", "holdout", "set",
    "subset", "subset_per_class", "other_per_class", "teacher", "splits",
)  # fmt: skip
# Overrides whose option is not ``--<key>``; switches show as ``--<key>`` or ``--no-<key>``.
_OPTION_NAMES = {"loss_params": "--loss-param", "subset": "--subset FILE"}
_SWITCHES = ("vflip", "noise", "amp", "ema")
# What timm's augmentation parsers raise for a policy string they cannot read.
_POLICY_ERRORS = (ValueError, KeyError, AssertionError, IndexError, TypeError)


# --- names and files --------------------------------------------------------------------------


def is_recipe_file(spec: str | Path) -> bool:
    return str(spec).lower().endswith(RECIPE_SUFFIXES)


def parse_recipe_name(spec: str) -> tuple[str, str]:
    """``(backbone, loss)`` from ``<backbone>-<loss>``, split at the first ``-``.

    Everything before the first ``-`` is the backbone, the rest the loss: timm architecture
    names never contain ``-`` (they use ``_`` and ``.``), nor do the seed aliases, while a
    plugin's loss name may.
    """
    backbone, sep, loss = spec.partition("-")
    if not sep or not backbone or not loss:
        raise RecipeError(
            f"recipe {spec!r} is not <backbone>-<loss> (e.g. resnet18-ce) nor a .yaml file; "
            "see `ee recipes` for backbones and losses"
        )
    return backbone, loss


def resolve_loss(name: str) -> str:
    """The registered name of loss ``name`` (or alias); ``RecipeError`` with close matches."""
    from ensemble_engine import get_registry

    losses = get_registry("losses")
    try:
        return losses.resolve(name)
    except PluginError:
        known = sorted({*(e.name for e in losses), *losses.aliases})
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(known)}"
        raise RecipeError(f"unknown loss {name!r}; {hint}") from None


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: what the parser found, and where (PyYAML spans lines)."""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


def load_recipe_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML recipe file, read by ``ensemble_engine.strict_yaml`` (safe: nothing
    in it is executed; a key written twice, or aliases that expand without bound, are refused)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist; check the path")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except StrictYAMLError as exc:
        raise RecipeError(f"recipe file {path}: {yaml_problem(exc)}; {exc.fix}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"recipe file {path} is not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise RecipeError(
            f"cannot read recipe file {path} ({exc.strerror or exc}); check its permissions"
        ) from None
    except yaml.YAMLError as exc:
        raise RecipeError(
            f"recipe file {path} is not valid YAML ({yaml_problem(exc)}); fix it there"
        ) from None
    if not isinstance(data, dict):
        raise RecipeError(
            f"recipe file {path} must hold a mapping of recipe fields (key: value lines), "
            f"not {type(data).__name__}"
        )
    producer = data.pop("producer", PRODUCER_NAME)
    if producer != PRODUCER_NAME:
        raise RecipeError(f"recipe file {path} is for producer {producer!r}, not {PRODUCER_NAME!r}")
    unknown = sorted(_key(k) for k in data if k not in FIELD_NAMES)
    if unknown:
        raise RecipeError(f"recipe file {path}: unknown field(s) {', '.join(unknown)}; "
                          f"known: {', '.join(FIELD_NAMES)}")  # fmt: skip
    missing = [k for k in NAME_FIELDS if k not in data]
    if missing:
        raise RecipeError(
            f"recipe file {path} needs {' and '.join(missing)}; add e.g. backbone: resnet18 "
            "and loss: ce"
        )
    return data


def _key(key: Any) -> str:
    """A mapping key as the error shows it: plain text as it is, anything else quoted."""
    text = str(key)
    return (
        text if isinstance(key, str) and text.isprintable() and text.strip() == text else repr(key)
    )


def _one_line(text: object) -> str:
    """A library's error message, which may quote the value it refused, in one line."""
    return " ".join(str(text).split())


# --- resolution -------------------------------------------------------------------------------


def resolve_recipe(
    spec: str | Path, overrides: Mapping[str, Any] | None = None, *, defaults: str = "imagenet"
) -> Recipe:
    """The recipe for a name or YAML file, the ``defaults`` profile, then explicit overrides.

    A file's own ``defaults:`` key wins over ``defaults``, ``--set defaults=…`` over both. A
    default ``img_size`` below the backbone's smallest input is raised to it. ``test_sizes``,
    unless given, keep the seed's ratios to the training size (224 → 224, 320, 380; 32 → 32,
    46, 54).
    """
    return resolve_with_sources(spec, overrides, defaults=defaults)[0]


def resolve_with_sources(
    spec: str | Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    defaults: str = "imagenet",
    defaults_source: str = "default",
) -> tuple[Recipe, dict[str, str]]:
    """``resolve_recipe``, and where each field's value came from (field → origin): ``recipe
    name``, ``recipe file PATH``, ``profile NAME``, ``default`` (the ``Recipe`` field's own),
    ``command line --OPTION``, or how it was derived (``img_size``, ``test_sizes``). The
    ``defaults`` field's origin is ``defaults_source`` unless the file or ``--set`` names it."""
    overrides = overrides or {}
    if is_recipe_file(spec):
        given, given_from = load_recipe_file(spec), f"recipe file {spec}"
    else:
        given = dict(zip(NAME_FIELDS, parse_recipe_name(str(spec)), strict=True))
        given_from = "recipe name"
    profile, profile_from = defaults, defaults_source
    if "defaults" in given:
        profile, profile_from = given.pop("defaults"), given_from
    set_pairs = coerce("set", overrides.get("set") or {}, dict)
    if "defaults" in set_pairs:
        profile, profile_from = set_pairs["defaults"], "command line --set defaults"
    if not isinstance(profile, str) or profile not in PROFILES:
        raise RecipeError(f"unknown defaults profile {profile!r}; use one of {', '.join(PROFILES)}")
    values = {**PROFILES[profile], **given, "defaults": profile}
    sources = {name: _default_source(name, given, given_from, profile) for name in FIELD_NAMES}
    sources["defaults"] = profile_from
    values = apply_overrides(values, overrides)
    sources.update(_override_sources(overrides, set_pairs))
    values["backbone"] = resolve_backbone(str(values["backbone"]))
    values["loss"] = resolve_loss(str(values["loss"]))
    low = min_input_size(values["backbone"])
    if low and "img_size" not in given and "img_size" not in _explicit_fields(overrides):
        img = coerce("img_size", values.get("img_size", Recipe.img_size), int)
        if low > img:
            values["img_size"] = low
            sources["img_size"] = f"the smallest input of {values['backbone']} ({low} px)"
    if "test_sizes" not in values:
        img = coerce("img_size", values.get("img_size", Recipe.img_size), int)
        values["test_sizes"] = [round(img * s / REFERENCE_SIZE) for s in REFERENCE_TEST_SIZES]
        ratios = ":".join(map(str, REFERENCE_TEST_SIZES))
        sources["test_sizes"] = f"img_size at the seed's ratios {ratios}"
    recipe = Recipe(**values)
    check_buildable(recipe)
    return recipe, sources


def _default_source(name: str, given: Mapping[str, Any], given_from: str, profile: str) -> str:
    if name in given:
        return given_from
    if name in PROFILES[profile] or name in PROFILE_VALUES:
        return f"profile {profile}"
    return "default"


def _override_sources(overrides: Mapping[str, Any], set_pairs: Mapping[str, Any]) -> dict[str, str]:
    """Field → ``command line --OPTION`` for each explicit override (``--set`` pairs by name)."""
    out = {}
    for key, value in overrides.items():
        if key == "set":
            out.update({name: f"command line --set {name}" for name in set_pairs})
        elif key in _OPTION_NAMES:
            out[key] = f"command line {_OPTION_NAMES[key]}"
        elif isinstance(value, bool) and key in _SWITCHES:
            out[key] = f"command line --{'' if value else 'no-'}{key}"
        else:
            out[key] = f"command line --{key.replace('_', '-')}"
    return out


def apply_overrides(values: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` updated with the explicit ``ee produce`` options (``set`` pairs last)."""
    out = dict(values)
    for key in sorted(overrides, key=lambda k: k == "set"):
        value = overrides[key]
        if key not in OVERRIDE_KEYS:
            raise RecipeError(f"unknown override {key!r}; known: {', '.join(OVERRIDE_KEYS)}")
        if key in ("vflip", "noise"):
            on = VFLIP_ON if key == "vflip" else NOISE_ON
            out[key] = on if coerce(key, value, bool) else 0.0
        elif key == "loss_params":
            out[key] = {**coerce(key, out.get(key, {}), dict), **coerce(key, value, dict)}
        elif key == "set":
            for name, text in coerce("set", value, dict).items():
                if name not in FIELD_NAMES or name in NAME_FIELDS:
                    raise RecipeError(
                        f"--set {_key(name)}=…: not a settable recipe field; name the backbone "
                        f"and loss in RECIPE, and set one of {', '.join(FIELD_NAMES[2:])}"
                    )
                out[name] = coerce(name, text, HINTS[name])
        else:
            out[key] = coerce(key, value, HINTS[key])
    return out


def _explicit_fields(overrides: Mapping[str, Any]) -> set[str]:
    return set(overrides) | set(coerce("set", overrides.get("set") or {}, dict))


def check_buildable(recipe: Recipe) -> None:
    """Build the loss, the augmentation policy and the TTA views once, so that a bad value fails
    now, before training, as a ``RecipeError``."""
    from ensemble_engine import create_loss

    from .transforms import auto_augment

    try:
        create_loss(recipe.loss, **recipe.loss_params)
    except (ValueError, TypeError) as exc:
        raise RecipeError(
            f"loss {recipe.loss} rejects loss_params {recipe.loss_params}: {_one_line(exc)}"
        ) from None
    try:
        auto_augment(recipe.aa, recipe.img_size)
    except _POLICY_ERRORS as exc:
        raise RecipeError(
            f"aa {recipe.aa!r} is not a timm augmentation policy ({_one_line(exc)}); "
            "use original, v0, rand-m9-mstd0.5 or none"
        ) from None
    # The prediction half fails here too, rather than after a long training run.
    from ee_tta import build_views, merge_kind

    merge_kind(recipe.merge)
    try:
        build_views(recipe.tta)
    except PluginError as exc:
        raise RecipeError(_one_line(exc)) from None  # an unknown view; the known ones are listed
