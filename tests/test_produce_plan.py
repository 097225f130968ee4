"""``ee produce RECIPE --plan`` (issue 16, item 6) and the defaults profile chosen from the
images themselves (item 9).

The plan trains nothing and writes nothing (no store, run folder or split), shows every value
with its origin, and lists exactly the predictions a real run then writes. The profile follows
the data: a folder of small images (median shorter side below 64 px) gets ``digits``, larger
ones ``imagenet``; a recipe file's ``defaults:`` or ``--set defaults=…`` decides over the data.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import small_digits, snapshot
from PIL import Image

from ensemble_engine.store import open_store

FAST = ("--img-size", "16", "--epochs", "1", "--workers", "0", "--test-sizes", "16")


def png_tree(root: Path, width: int, height: int | None = None, per_folder: int = 2) -> Path:
    """train/{a,b} and val/{a,b}, ``per_folder`` PNGs of width × height each."""
    for folder in ("train/a", "train/b", "val/a", "val/b"):
        (root / folder).mkdir(parents=True)
        for i in range(per_folder):
            image = Image.new("RGB", (width, height or width), (40 * i, 90, 0))
            image.save(root / folder / f"{i}.png")
    return root


def plan_json(run_cli, *args) -> dict:
    res = run_cli("produce", *args, "--plan", "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_plan_trains_nothing_and_writes_nothing(digits_dir, run_cli, tmp_path):
    where = ("--store", tmp_path / "s.zarr", "--runs-dir", tmp_path / "runs")
    before = snapshot(tmp_path, digits_dir)
    res = run_cli("produce", "resnet10t-ce", "--data", digits_dir, *where, "--plan")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0] == "plan of resnet10t-ce (producer timm): nothing trained, nothing written"
    assert lines[1].startswith("defaults: digits (64 sampled images, all 32×32 px, median ")
    assert "  epochs " in res.stdout and "predictions (6):" in res.stdout
    assert "  resnet10t-ce-s46/test" in lines
    as_json = plan_json(run_cli, "resnet10t-ce", "--data", digits_dir, *where)
    assert as_json["predictions"][0] == "resnet10t-ce-s32/val"
    assert snapshot(tmp_path, digits_dir) == before  # no store, no run folder, no split
    assert not (tmp_path / "s.zarr").exists() and not (tmp_path / "runs").exists()


def test_plan_json_shape_and_origins(digits_dir, run_cli, tmp_path):
    from ee_timm.recipe import resolve_recipe

    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text("backbone: resnet10t\nloss: ce\nepochs: 2\nlr: 0.02\n")
    where = ("--data", digits_dir, "--store", tmp_path / "s.zarr", "--runs-dir", tmp_path / "runs")
    given = ("--batch-size", "32", "--set", "warmup_epochs=0", "--no-vflip")
    plan = plan_json(run_cli, recipe_file, *where, *given)
    assert {"recipe", "sources", "run_id", "predictions", "notes"} <= set(plan)
    src, values = plan["sources"], plan["recipe"]
    assert set(src) == set(values)
    file_origin = f"recipe file {recipe_file}"
    assert src["backbone"] == src["loss"] == src["epochs"] == src["lr"] == file_origin
    assert src["batch_size"] == "command line --batch-size"
    assert src["warmup_epochs"] == "command line --set warmup_epochs"
    assert src["vflip"] == "command line --no-vflip"
    assert src["img_size"] == src["tta"] == src["mixup"] == "profile digits"
    assert src["momentum"] == src["seed"] == "default"
    assert src["defaults"].startswith("data: 64 sampled images, all 32×32 px")
    assert src["test_sizes"] == "img_size at the seed's ratios 224:320:380"
    assert (values["epochs"], values["lr"], values["batch_size"]) == (2, 0.02, 32)
    assert (values["warmup_epochs"], values["vflip"], values["img_size"]) == (0, 0.0, 32)
    overrides = {"batch_size": 32, "set": {"warmup_epochs": "0"}, "vflip": False}
    expected = resolve_recipe(recipe_file, overrides, defaults="digits")
    assert values == expected.to_dict() and plan["run_id"] == expected.run_id()
    assert plan["predictions"] == [
        f"resnet10t-ce-s{size}/{split}" for size in (32, 46, 54) for split in ("val", "test")
    ]
    # The plan's recipe is a recipe file (JSON is YAML): every value then comes from the file.
    again_file = tmp_path / "again.yaml"
    again_file.write_text(json.dumps(values))
    again = plan_json(run_cli, again_file, *where)
    assert again["run_id"] == plan["run_id"] and again["recipe"] == values
    assert set(again["sources"].values()) == {f"recipe file {again_file}"}


def test_plan_lists_the_names_a_real_run_writes(run_cli, tmp_path):
    data = small_digits(tmp_path / "d", train_per_class=4, val_per_class=2, test_images=10, size=8)
    store, runs = tmp_path / "s.zarr", tmp_path / "runs"
    args = ("resnet10t-ce", "--data", data, "--store", store, "--runs-dir", runs, *FAST)
    plan = plan_json(run_cli, *args, "--seed", "3")
    assert plan["recipe"]["defaults"] == "digits"  # 8-px images: the small-image profile
    assert plan["predictions"] == ["resnet10t-ce-seed3-s16/val", "resnet10t-ce-seed3-s16/test"]
    res = run_cli("produce", *args, "--seed", "3")
    assert res.exit_code == 0, res.output
    assert "defaults: digits (64 sampled images, all 8×8 px, median shorter side 8 px < 64): " \
        "--set defaults=imagenet to override" in " ".join(res.stderr.split())  # fmt: skip
    assert f"to {store}: {', '.join(plan['predictions'])}" in res.stdout
    assert sorted(p.id for p in open_store(store, "r").list()) == sorted(plan["predictions"])
    assert [p.name for p in runs.iterdir()] == [plan["run_id"]]
    # On the store that now exists: taken names are refused as produce refuses them, and with
    # --force the plan still writes nothing (the splits it would register are there already).
    taken = run_cli("produce", *args, "--seed", "3", "--plan")
    assert taken.exit_code == 2 and "--force" in taken.stderr.splitlines()[-1]
    before = snapshot(tmp_path)
    forced = plan_json(run_cli, *args, "--seed", "3", "--force")
    assert forced["predictions"] == plan["predictions"] and snapshot(tmp_path) == before
    specialist = tmp_path / "weak.txt"
    specialist.write_text("3\n8\n")
    cov = plan_json(run_cli, *args, "--subset", specialist)
    assert cov["predictions"] == ["cov-resnet10t-ce-s16/val", "cov-resnet10t-ce-s16/test"]
    assert cov["run_id"].startswith("cov-resnet10t-ce-s0-")
    assert cov["sources"]["subset"] == "command line --subset FILE"


def test_profile_follows_the_images(run_cli, tmp_path):
    small, large = png_tree(tmp_path / "small", 8), png_tree(tmp_path / "large", 256)
    where = ("--store", tmp_path / "s.zarr", "--runs-dir", tmp_path / "runs")
    plan = plan_json(run_cli, "resnet10t-ce", "--data", small, *where)
    assert (plan["recipe"]["defaults"], plan["recipe"]["img_size"]) == ("digits", 32)
    assert plan["notes"] == [
        "defaults: digits (8 sampled images, all 8×8 px, median shorter side 8 px < 64): "
        "--set defaults=imagenet to override"
    ]
    plan = plan_json(run_cli, "resnet10t-ce", "--data", large, *where)
    assert (plan["recipe"]["defaults"], plan["recipe"]["img_size"]) == ("imagenet", 224)
    assert plan["sources"]["img_size"] == "profile imagenet"
    assert plan["notes"][0].endswith("median shorter side 256 px >= 64): --set defaults=digits "
                                     "to override")  # fmt: skip
    chosen = plan_json(
        run_cli, "resnet10t-ce", "--data", small, *where, "--set", "defaults=imagenet"
    )
    assert (chosen["recipe"]["defaults"], chosen["recipe"]["img_size"]) == ("imagenet", 224)
    assert chosen["sources"]["defaults"] == "command line --set defaults"
    assert chosen["notes"] == [
        "defaults: imagenet (command line --set defaults; the data alone would give digits)"
    ]
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text("backbone: resnet10t\nloss: ce\ndefaults: imagenet\n")
    chosen = plan_json(run_cli, recipe_file, "--data", small, *where)
    assert chosen["sources"]["defaults"] == f"recipe file {recipe_file}"
    assert chosen["recipe"]["defaults"] == "imagenet"


def test_profile_threshold_shorter_side_and_sample(tmp_path):
    from ee_timm.data_profile import SAMPLE_LIMIT, SMALL_SIDE, choose_profile, sample_images

    assert SMALL_SIDE == 64
    assert choose_profile(png_tree(tmp_path / "63", 63)).profile == "digits"
    assert choose_profile(png_tree(tmp_path / "64", 64)).profile == "imagenet"
    wide = choose_profile(png_tree(tmp_path / "wide", 400, 40))  # the shorter side decides
    assert wide.profile == "digits" and "all 400×40 px" in wide.reason
    mixed = png_tree(tmp_path / "mixed", 300)
    for i in range(3):  # 8 large, 3 small: the median is large
        Image.new("RGB", (16, 16)).save(mixed / "train" / "a" / f"s{i}.png")
    (mixed / "train" / "a" / "broken.png").write_bytes(b"not a png")  # left out, not fatal
    (mixed / "train" / "a" / "notes.txt").write_text("16x16")
    choice = choose_profile(mixed)
    assert choice.profile == "imagenet"
    assert choice.reason.startswith("11 sampled images, 16×16 to 300×300 px")
    assert choose_profile(None).profile == "digits"
    empty = tmp_path / "empty"
    (empty / "train" / "a").mkdir(parents=True)
    assert choose_profile(empty).profile == "imagenet"

    many = tmp_path / "many"
    for c in range(12):
        (many / "train" / f"{c:02d}").mkdir(parents=True)
        for i in range(10):
            Image.new("L", (20, 20)).save(many / "train" / f"{c:02d}" / f"{i}.png")
    (many / ".hidden").mkdir()
    Image.new("L", (20, 20)).save(many / ".hidden" / "x.png")
    picked = sample_images(many)
    assert len(picked) == SAMPLE_LIMIT and picked == sample_images(many)
    assert {p.parent.name for p in picked} == {f"{c:02d}" for c in range(12)}  # every class


@pytest.fixture
def planless_producer():
    """A producer named ``planless`` with no ``plan()``."""
    from ensemble_engine.hookspecs import hookimpl
    from ensemble_engine.plugins import get_host, reset_host
    from ensemble_engine.producer import Producer

    class Planless(Producer):
        def produce(self, request):
            raise AssertionError("--plan must not produce")

    class Plugin:
        @hookimpl
        def register_producers(self, register):
            register("planless", Planless)

    reset_host()
    get_host().add(Plugin(), "planless-plugin")
    yield
    reset_host()


def test_producer_without_plan_is_refused_in_one_line(planless_producer, run_cli, tmp_path):
    res = run_cli("produce", "planless", "--store", tmp_path / "s.zarr", "--plan")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.stderr.splitlines() == [
        "Error: producer 'planless' cannot show a plan (it has no plan()); run without --plan"
    ]
    assert list(tmp_path.iterdir()) == []


def test_recipes_states_the_rule_and_imagenet_keeps_224(run_cli):
    from ee_timm.recipe import resolve_recipe
    from ee_timm.recipe_resolve import resolve_with_sources

    rule = json.loads(run_cli("recipes", "--json").stdout)["profile_rule"]
    assert "digits where the median shorter side of up to 64 sampled images is below 64 px" in rule
    # A backbone's smallest input (75 px) raises a smaller default, never the profile's 224.
    assert resolve_recipe("inceptionresnetv2-ce").img_size == 224
    recipe, sources = resolve_with_sources("inceptionresnetv2-ce", defaults="digits")
    assert recipe.img_size == 75
    assert sources["img_size"] == "the smallest input of inception_resnet_v2 (75 px)"
