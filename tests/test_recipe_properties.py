"""Property tests of recipe resolution: whatever ``--set`` pairs or recipe file a user writes.

- valid ``--set KEY=VALUE`` text for any mix of fields resolves to a recipe that holds exactly
  those values (each expected value is computed here from the text, independently of
  ``fields.coerce``), passes every check, and round-trips through its saved ``recipe.yaml`` to
  an equal recipe with the same run id;
- an invalid value among valid ones is a ``RecipeError``;
- any text for any field, any YAML document as a recipe file, any bytes as a file: a valid
  recipe (which then round-trips) or a ``RecipeError``, never another exception, and its message
  is one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from ee_timm.checkpoint import write_recipe
from ee_timm.recipe import (
    FIELD_NAMES,
    INITS,
    NAME_FIELDS,
    PROFILES,
    SEED_LIMIT,
    Recipe,
    recipe_problems,
    resolve_recipe,
)
from ee_timm.recipe_spec import NOISE_MODES
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ensemble_engine.errors import RecipeError

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
VIEWS = ("identity", "hflip", "rotate", "color_jitter", "gauss_noise")
MERGES = ("mean_logits", "mean_probs", "gmean")
POLICIES = {"none": None, "original": "original", "v0": "v0", "rand-m9-mstd0.5": "rand-m9-mstd0.5"}
DEVICES = ("auto", "cpu", "cuda", "cuda:0", "cuda:3")
TRUE, FALSE = ("true", "yes", "on", "1", "True"), ("false", "no", "off", "0", "OFF")
SETTABLE = tuple(f for f in FIELD_NAMES if f not in NAME_FIELDS)


# --- valid values: (text as typed after --set KEY=, the value the recipe must then hold) --------


def number(low: float, high: float, **kw: Any) -> st.SearchStrategy[float]:
    return st.floats(low, high, allow_nan=False, allow_infinity=False, **kw)


def as_text(value: float) -> tuple[str, float]:
    return repr(value), value  # repr is exact: float(repr(x)) == x


def pair(low: float, high: float | None = None) -> st.SearchStrategy[tuple[str, tuple]]:
    """Two numbers, ``low < a <= b <= high``, as ``a,b`` text."""
    top = high if high is not None else 10.0

    def build(values: list[float]) -> tuple[str, tuple]:
        a, b = sorted(values)
        return f"{a!r},{b!r}", (a, b)

    return st.lists(number(low, top, exclude_min=low == 0.0), min_size=2, max_size=2).map(build)


def switch() -> st.SearchStrategy[tuple[str, bool]]:
    return st.one_of(
        st.sampled_from(TRUE).map(lambda t: (t, True)),
        st.sampled_from(FALSE).map(lambda t: (t, False)),
    )


def integer(low: int, high: int) -> st.SearchStrategy[tuple[str, int]]:
    return st.integers(low, high).map(lambda i: (str(i), i))


def unique_list(elements: st.SearchStrategy, convert=str, **kw) -> st.SearchStrategy:
    return st.lists(elements, unique=True, min_size=1, **kw).map(
        lambda items: (",".join(map(convert, items)), tuple(items))
    )


CLASS_ID = st.text("abcxyz0123456789_", min_size=1, max_size=6)
SIMPLE: dict[str, st.SearchStrategy[tuple[str, Any]]] = {
    "defaults": st.sampled_from(sorted(PROFILES)).map(lambda p: (p, p)),
    "epochs": integer(1, 500),
    "warmup_epochs": integer(0, 20),
    "momentum": number(0, 0.999).map(as_text),
    "nesterov": switch(),
    "weight_decay": number(0, 1).map(as_text),
    "warmup_lr": number(0, 1).map(as_text),
    "img_size": integer(8, 512),
    "scale": pair(0.0, 1.0),
    "ratio": pair(0.0),
    "hflip": number(0, 1).map(as_text),
    "vflip": number(0, 1).map(as_text),
    "noise": number(0, 1).map(as_text),
    "color_jitter": st.tuples(number(0, 2), number(0, 2), number(0, 2), number(0, 0.5)).map(
        lambda v: (",".join(map(repr, v)), v)
    ),
    "noise_sigma": pair(0.0, 40.0),
    "noise_mode": st.sampled_from(NOISE_MODES).map(lambda m: (m, m)),
    "mixup_prob": number(0, 1).map(as_text),
    "mixup_switch_prob": number(0, 1).map(as_text),
    "mixup_smoothing": number(0, 1, exclude_max=True).map(as_text),
    "aa": st.sampled_from(sorted(POLICIES)).map(lambda p: (p, POLICIES[p])),
    "init": st.sampled_from(INITS).map(lambda i: (i, i)),
    "amp": switch(),
    "channels_last": switch(),
    "ema": switch(),
    "ema_decay": number(0, 1, exclude_min=True, exclude_max=True).map(as_text),
    "seed": integer(0, SEED_LIMIT - 1),
    "device": st.sampled_from(DEVICES).map(lambda d: (d, d)),
    "workers": integer(0, 16),
    "test_sizes": unique_list(st.integers(8, 512), max_size=4),
    "tta": unique_list(st.sampled_from(VIEWS)),
    "merge": st.sampled_from(MERGES).map(lambda m: (m, m)),
    "crop_pct": number(0, 1, exclude_min=True).map(as_text),
    "holdout": number(0, 1, exclude_max=True).map(as_text),
}


@st.composite
def valid_sets(draw) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(recipe name, --set pairs, the values they must give) for a random mix of fields."""
    chosen = draw(st.lists(st.sampled_from(sorted(SIMPLE)), unique=True, max_size=12))
    texts: dict[str, str] = {}
    expected: dict[str, Any] = {}
    for name in chosen:
        texts[name], expected[name] = draw(SIMPLE[name])
    if draw(st.booleans()):  # lr and min_lr: 0 <= min_lr <= lr
        lr = draw(number(1e-6, 1.0))
        texts["lr"], expected["lr"] = as_text(lr)
        texts["min_lr"], expected["min_lr"] = as_text(draw(number(0, lr)))
    if draw(st.booleans()):  # mixup/cutmix need an even batch
        for name in ("mixup", "cutmix"):
            texts[name], expected[name] = as_text(draw(number(0, 2)))
        texts["batch_size"], expected["batch_size"] = draw(integer(1, 256).map(_even))
    elif draw(st.booleans()):  # any batch, mixup and cutmix off (the imagenet profile has both)
        texts["batch_size"], expected["batch_size"] = draw(integer(1, 256))
        for name in ("mixup", "cutmix"):
            texts[name], expected[name] = "0", 0.0
    if draw(st.booleans()):  # a specialist: subset_per_class/other_per_class need a subset
        texts["subset"], expected["subset"] = draw(unique_list(CLASS_ID, max_size=5))
        texts["subset_per_class"], expected["subset_per_class"] = draw(integer(1, 1000))
        texts["other_per_class"], expected["other_per_class"] = draw(integer(1, 50))
    spec = "resnet10t-ce"
    if draw(st.booleans()):
        spec, smoothing = "resnet10t-ls", draw(number(0, 0.99))
        texts["loss_params"], expected["loss_params"] = f"{{smoothing: {smoothing!r}}}", smoothing
    return spec, texts, expected


def _even(pair: tuple[str, int]) -> tuple[str, int]:
    value = pair[1] + pair[1] % 2
    return str(value), value


def round_trips(recipe: Recipe, folder: Path) -> None:
    """The saved recipe.yaml re-runs as the same recipe, and a checkpoint's dict rebuilds it."""
    path = folder / "recipe.yaml"
    write_recipe(path, recipe.to_dict())
    again = resolve_recipe(path)
    assert again == recipe
    assert again.run_id() == recipe.run_id()
    saved = yaml.safe_load(path.read_text())
    assert Recipe(**{k: v for k, v in saved.items() if k in FIELD_NAMES}) == recipe
    assert all(ok for ok, _ in recipe_problems(again))


@SETTINGS
@given(case=valid_sets(), profile=st.sampled_from(sorted(PROFILES)))
def test_valid_set_pairs_give_those_values_and_round_trip(case, profile, tmp_path_factory):
    spec, texts, expected = case
    recipe = resolve_recipe(spec, {"set": texts}, defaults=profile)
    for name, value in expected.items():
        if name == "loss_params":  # YAML reads 1e-05 as text: compare as the loss does
            assert float(recipe.loss_params["smoothing"]) == value
        else:
            assert getattr(recipe, name) == value, name
    assert recipe.defaults == expected.get("defaults", profile)
    round_trips(recipe, tmp_path_factory.mktemp("valid"))


# --- invalid values: one bad value among valid ones is a RecipeError --------------------------

NOT_FINITE = st.sampled_from(["inf", "-inf", "nan", "NaN", "1e999", "-1e999"])
WORDS = st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)


def bad_float(low: float, high: float, *, low_ok: bool = True, high_ok: bool = True):
    """Text of a number outside the range from ``low`` to ``high`` (``*_ok``: that end is
    valid), not finite, or not a number at all."""
    below = number(-1e9, low, exclude_max=low_ok)
    above = number(high, 1e9, exclude_min=high_ok)
    return st.one_of(below.map(repr), above.map(repr), NOT_FINITE, WORDS)


INVALID: dict[str, st.SearchStrategy[str]] = {
    "epochs": st.one_of(st.integers(-100, 0).map(str), st.just("2.5"), WORDS),
    "batch_size": st.one_of(st.integers(-100, 0).map(str), WORDS),
    "lr": st.one_of(number(-1e9, 0).map(repr), NOT_FINITE, WORDS),
    "momentum": bad_float(0, 1, high_ok=False),
    "weight_decay": st.one_of(number(-1e9, -1e-9).map(repr), NOT_FINITE),
    "warmup_epochs": st.one_of(st.integers(-100, -1).map(str), WORDS),
    "warmup_lr": st.one_of(number(-1e9, -1e-9).map(repr), NOT_FINITE),
    "min_lr": st.one_of(number(-1e9, -1e-9).map(repr), NOT_FINITE),
    "img_size": st.one_of(st.integers(-10, 7).map(str), WORDS),
    "scale": st.one_of(
        st.just("0.9,0.5"),
        st.just("0,1"),
        st.just("0.5"),
        st.just("0.1,1.5"),
        st.just("0.1,nan"),
        st.just("1,2,3"),
    ),  # fmt: skip
    "ratio": st.one_of(st.just("2,1"), st.just("0,1"), st.just("1,inf"), st.just("1")),
    "hflip": bad_float(0, 1),
    "vflip": bad_float(0, 1),
    "noise": bad_float(0, 1),
    "color_jitter": st.one_of(
        st.just("0.4,0.4,0.4,0.6"),
        st.just("-1,0,0,0"),
        st.just("0.4,0.4,0.4"),
        st.just("inf,0,0,0"),
    ),  # fmt: skip
    "noise_sigma": st.one_of(st.just("5,1"), st.just("-1,2"), st.just("1,inf")),
    "aa": st.sampled_from(["bogus", "x", "rand-n-1", "augmix-w-1"]),
    "noise_mode": WORDS.filter(lambda w: w not in NOISE_MODES),
    "mixup_prob": bad_float(0, 1),
    "mixup_switch_prob": bad_float(0, 1),
    "mixup_smoothing": bad_float(0, 1, high_ok=False),
    "mixup": st.one_of(number(-1e9, -1e-9).map(repr), NOT_FINITE),
    "cutmix": st.one_of(number(-1e9, -1e-9).map(repr), NOT_FINITE),
    "init": WORDS.filter(lambda w: w not in INITS),
    "nesterov": st.sampled_from(["maybe", "2", "-1", "truthy"]),
    "ema_decay": bad_float(0, 1, low_ok=False, high_ok=False),
    "seed": st.one_of(st.integers(SEED_LIMIT, 2**70).map(str), st.integers(-100, -1).map(str)),
    "device": st.sampled_from(["tpu", "cuda:", "cuda:x", "gpu", "cpu:0", "cuda:-1", "cuda:²"]),
    "workers": st.one_of(st.integers(-100, -1).map(str), WORDS),
    "test_sizes": st.one_of(st.just("32,32"), st.just("4"), st.just(""), st.just("32,x")),
    "tta": st.one_of(st.just("identity,identity"), st.just("spin"), st.just("")),
    "merge": WORDS.filter(lambda w: w not in MERGES),
    "crop_pct": bad_float(0, 1, low_ok=False),
    "holdout": st.one_of(number(1, 1e9).map(repr), number(-1e9, -1e-9).map(repr), NOT_FINITE),
    "subset": st.sampled_from(["a,a", "__other__", "a,__other__", "a, ,a"]),
    "subset_per_class": st.sampled_from(["0", "-3", "x"]),
    "other_per_class": st.sampled_from(["0", "-3", "x"]),
    "defaults": WORDS.filter(lambda w: w not in PROFILES),
    "loss_params": st.sampled_from(["{smoothing: 2}", "{nope: 1}", "[1, 2]", "{a", "7"]),
}


@SETTINGS
@given(case=valid_sets(), bad=st.sampled_from(sorted(INVALID)), data=st.data())
def test_one_invalid_value_among_valid_ones_is_a_recipe_error(case, bad, data):
    spec, texts, _ = case
    texts = {**texts, bad: data.draw(INVALID[bad], label=bad)}
    if bad in ("subset_per_class", "other_per_class"):
        texts["subset"] = "a,b"  # these need a subset to be checked at all
    with pytest.raises(RecipeError):
        resolve_recipe(spec, {"set": texts})


@SETTINGS
@given(case=valid_sets(), mix=st.sampled_from(["mixup", "cutmix"]), odd=st.integers(0, 100))
def test_mixing_with_an_odd_batch_is_a_recipe_error(case, mix, odd):
    spec, texts, _ = case
    texts = {**texts, mix: "0.2", "batch_size": str(2 * odd + 1)}
    with pytest.raises(RecipeError, match="even batch_size"):
        resolve_recipe(spec, {"set": texts})


@SETTINGS
@given(case=valid_sets(), name=st.one_of(WORDS, st.text(max_size=8), st.sampled_from(NAME_FIELDS)))
def test_setting_an_unknown_or_name_field_is_a_one_line_recipe_error(case, name):
    assume(name not in SETTABLE)
    spec, texts, _ = case
    with pytest.raises(RecipeError, match="not a settable recipe field") as caught:
        resolve_recipe(spec, {"set": {**texts, name: "1"}})
    assert "\n" not in str(caught.value)


# --- anything at all: a recipe or a RecipeError ---------------------------------------------


def valid_or_recipe_error(resolve, folder: Path) -> None:
    try:
        recipe = resolve()
    except RecipeError as exc:
        assert "\n" not in str(exc), str(exc)
        return
    round_trips(recipe, folder)


@SETTINGS
@given(
    pairs=st.dictionaries(st.sampled_from(SETTABLE), st.text(max_size=20), max_size=4),
    profile=st.sampled_from(sorted(PROFILES)),
)
def test_any_text_for_any_field_is_a_recipe_or_a_recipe_error(pairs, profile, tmp_path_factory):
    folder = tmp_path_factory.mktemp("any-text")
    valid_or_recipe_error(lambda: resolve_recipe("resnet10t-ce", {"set": pairs}, defaults=profile),
                          folder)  # fmt: skip


YAML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),  # fmt: skip
    max_leaves=6,
)


@SETTINGS
@given(
    fields=st.dictionaries(
        st.sampled_from(SETTABLE) | st.text(max_size=6) | st.integers(), YAML_VALUES, max_size=5
    ),
    names=st.sampled_from([{"backbone": "resnet10t", "loss": "ce"}, {"loss": "ls"}, {}]),
)
def test_any_yaml_recipe_file_is_a_recipe_or_a_recipe_error(fields, names, tmp_path_factory):
    folder = tmp_path_factory.mktemp("any-yaml")
    path = folder / "r.yaml"
    path.write_text(yaml.safe_dump({**names, **fields}, allow_unicode=True, sort_keys=False))
    valid_or_recipe_error(lambda: resolve_recipe(path), folder)


@SETTINGS
@given(content=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_as_a_recipe_file_are_a_recipe_or_a_recipe_error(content, tmp_path_factory):
    folder = tmp_path_factory.mktemp("any-bytes")
    path = folder / "r.yml"
    path.write_bytes(b"backbone: resnet10t\nloss: ce\n" + content)
    valid_or_recipe_error(lambda: resolve_recipe(path), folder)
