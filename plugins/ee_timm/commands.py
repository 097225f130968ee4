"""The timm plugin's commands: ``ee recipes`` (what to train) and ``ee predict`` (re-predict).

Both are added through the ``register_commands`` hook, like a third party's commands. Neither
imports torch or timm until it runs, so ``ee --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ensemble_engine import split_list


@click.command("recipes")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def recipes_command(as_json: bool) -> None:
    """List backbone aliases and losses for <backbone>-<loss> recipes.

    Any timm model name (`timm.list_models()`) is a backbone too.
    """
    from ensemble_engine import get_registry

    from .backbones import BACKBONE_ALIASES
    from .data_profile import PROFILE_RULE
    from .recipe import KD_FIELDS, KD_SOURCES, PROFILE_NOTES, PROFILES, Recipe
    from .recipe_spec import SEED_SOURCES, profile_values

    losses = [
        {"name": e.name, "aliases": list(e.aliases), "description": e.description,
         "plugin": e.plugin}
        for e in get_registry("losses")
    ]  # fmt: skip
    defaults = Recipe.__dataclass_fields__
    distillation = {
        key: {"default": defaults[key].default, "source": KD_SOURCES[key]} for key in KD_FIELDS
    }
    if as_json:
        payload = {
            "backbones": BACKBONE_ALIASES, "losses": losses, "defaults": PROFILE_NOTES,
            "profiles": {name: profile_values(name) for name in PROFILES},
            "sources": SEED_SOURCES, "profile_rule": PROFILE_RULE, "distillation": distillation,
        }  # fmt: skip
        click.echo(json.dumps(payload, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    backbones = Table("alias", "timm model", title="backbones (or any timm model name)")
    for alias, model in BACKBONE_ALIASES.items():
        backbones.add_row(alias, model)
    loss_table = Table("loss", "aliases", "plugin", "description", title="losses")
    for loss in losses:
        loss_table.add_row(loss["name"], ", ".join(loss["aliases"]), loss["plugin"],
                           loss["description"])  # fmt: skip
    profiles = Table("defaults", "values", title="defaults profiles", caption=PROFILE_RULE)
    for profile, note in PROFILE_NOTES.items():
        profiles.add_row(profile, note)
    values = Table("value", *PROFILES, "imagenet value from", title="profile values")
    by_profile = {name: profile_values(name) for name in PROFILES}
    for key in by_profile["imagenet"]:
        shown = [_shown(by_profile[name][key]) for name in PROFILES]
        values.add_row(key, *shown, SEED_SOURCES.get(key, ""))
    kd = Table(
        "field", "default", "from", title="distillation (ee produce --teacher NAME)",
        caption="loss = (1 − kd_alpha) · the recipe's loss + kd_alpha · T² · KL(teacher ‖ "
        "student) at T = kd_temperature (Hinton et al. 2015); set with --set kd_alpha=A",
    )  # fmt: skip
    for key, row in distillation.items():
        kd.add_row(key, _shown(row["default"]), row["source"])
    for table in (backbones, loss_table, profiles, values, kd):
        console.print(table)


def _shown(value: object) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return "none" if value is None else str(value)


@click.command("predict")
@click.argument("run", metavar="RUN_OR_CHECKPOINT", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--data",
    "data_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The image folder the run was trained on. Default: the embedded digits.",
)
@click.option("--store", default="ee.zarr", show_default=True, help="Prediction store path or URL.")
@click.option("--test-sizes", metavar="N,N,...", help="Test sizes. Default: the run's recipe's.")
@click.option("--tta", metavar="VIEW,...", help="TTA views (see `ee plugins`). Default: recipe's.")
@click.option(
    "--merge",
    metavar="MODE",
    help="How views merge: mean_logits, mean_probs or gmean. Default: the recipe's.",
)
@click.option("--keep-views", is_flag=True, help="Also store each view's own logits.")
@click.option(
    "--splits",
    metavar="SPLIT,...",
    help="Splits to predict. Default: all but train (and but val on a store with a holdout).",
)
@click.option(
    "--name",
    help="Prediction name before -s<size>. Default: [cov-]<backbone>-<loss>[-seed<N>].",
)
@click.option("--force", is_flag=True, help="Replace predictions of the same names.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per batch.")
@click.option("--device", metavar="auto|cpu|cuda", help="Where to predict.")
@click.option("--workers", type=click.IntRange(min=0), help="Data-loading processes.")
def predict_command(
    run: Path,
    data_dir: Path | None,
    store: str,
    test_sizes: str | None,
    tta: str | None,
    merge: str | None,
    keep_views: bool,
    splits: str | None,
    name: str | None,
    force: bool,
    batch_size: int | None,
    device: str | None,
    workers: int | None,
) -> None:
    """Predict with a trained run again, at other test sizes or views, without training.

    RUN_OR_CHECKPOINT is a run folder (its best.pth: the weights of the epoch with the best
    val top-1) or a checkpoint file of one; the recipe saved in the checkpoint gives every
    value not given here. Predictions are added to the store as `ee produce` writes them,
    named <name>-s<size>.

    \b
    Examples:
      ee predict runs/resnet18-ce-s0-1a2b3c4d --test-sizes 64
      ee predict runs/resnet18-ce-s0-1a2b3c4d --tta identity,hflip,rotate --name r18-tta
    """
    from rich.console import Console

    from ensemble_engine import open_dataset, open_store, register_splits, with_store_holdout

    from .prediction import check_run_holdout, load_run, predict_run
    from .recipe import check_buildable

    trained = load_run(run)
    changes = {
        "test_sizes": split_list(test_sizes, int, "--test-sizes") if test_sizes else None,
        "tta": split_list(tta, str, "--tta") if tta else None,
        "merge": merge, "batch_size": batch_size, "device": device, "workers": workers,
    }  # fmt: skip
    recipe = trained.recipe.replace(**{k: v for k, v in changes.items() if v is not None})
    check_buildable(recipe)
    st = open_store(store, "a")
    source = with_store_holdout(open_dataset(data_dir), st)  # predicts the store's holdout too
    check_run_holdout(trained, source)  # before the splits are registered
    register_splits(st, source)
    ids = predict_run(
        trained, source, st, recipe=recipe,
        splits=split_list(splits, str, "--splits") if splits else None,
        name=name, replace=force, keep_views=keep_views, console=Console(stderr=True),
    )  # fmt: skip
    click.echo(f"wrote {len(ids)} prediction(s) to {store}: {', '.join(ids)}")
