"""``ee produce`` (train a model and write its predictions) and ``ee recipes`` (what to train).

Only the options a user actually gives reach the producer (``ProduceRequest.overrides``); every
other value comes from the recipe and its defaults profile, so a recipe file is never silently
overridden by a command-line default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import yaml
from click.core import ParameterSource

from ..errors import RecipeError
from ..plugins import get_host
from ..producer import ProduceRequest

DEFAULT_PRODUCER = "timm"
RECIPE_SUFFIXES = (".yaml", ".yml")

# Options given as text: comma lists (→ element type) and repeated KEY=VALUE (→ override key).
_LIST_OPTIONS = {"test_sizes": int, "tta": str}
_PAIR_OPTIONS = {"loss_param": "loss_params", "set_pairs": "set"}
# Every option that becomes an override when given; ``run_id`` names the run folder.
_OVERRIDE_OPTIONS = (
    "epochs", "batch_size", "lr", "img_size", "mixup", "cutmix", "aa", "vflip", "noise", "seed",
    "device", "workers", "amp", "ema", "holdout", "init", "test_sizes", "tta", "loss_param",
    "set_pairs", "run_id",
)  # fmt: skip


def _split_pairs(values: tuple[str, ...], option: str, parse_value: bool) -> dict[str, Any]:
    pairs: dict[str, Any] = {}
    for item in values:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=option)
        pairs[key.strip()] = _scalar(text) if parse_value else text
    return pairs


def _scalar(text: str) -> Any:
    """A loss parameter's value: a number where it reads as one (``1e-4`` too), else YAML."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text) if text.strip() else text


def _split_list(text: str, kind: type, option: str) -> list[Any]:
    try:
        items = [kind(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a list like 1,2", param_hint=option) from None
    if not items:
        raise click.BadParameter("give at least one value", param_hint=option)
    return items


def explicit_overrides(ctx: click.Context, options: dict[str, Any]) -> dict[str, Any]:
    """The options given on the command line (or by environment), as ``overrides`` values."""
    given = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    explicit = {name for name in _OVERRIDE_OPTIONS if ctx.get_parameter_source(name) in given}
    overrides: dict[str, Any] = {}
    for name in sorted(explicit):
        value = options[name]
        option = "--" + name.replace("_pairs", "").replace("_", "-")
        if name in _PAIR_OPTIONS:
            if value:
                overrides[_PAIR_OPTIONS[name]] = _split_pairs(value, option, name == "loss_param")
        elif name in _LIST_OPTIONS:
            overrides[name] = _split_list(value, _LIST_OPTIONS[name], option)
        elif name == "aa":
            overrides[name] = None if value.strip().lower() == "none" else value
        else:
            overrides[name] = value
    return overrides


def producer_for(recipe: str) -> str:
    """Which producer runs RECIPE: its own name, a recipe file's ``producer:``, else timm."""
    if recipe in get_host().producers:
        return recipe
    if recipe.lower().endswith(RECIPE_SUFFIXES):
        path = Path(recipe)
        if not path.is_file():
            raise RecipeError(f"recipe file {path} does not exist; check the path")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise RecipeError(f"recipe file {path} is not valid YAML: {exc}") from None
        if isinstance(data, dict):
            return str(data.get("producer", DEFAULT_PRODUCER))
    return DEFAULT_PRODUCER


@click.command("produce")
@click.argument("recipe")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Image folder (VIPriors layout or ImageFolder). Default: the embedded digits.",
)
@click.option("--store", default="ee.zarr", show_default=True, help="Prediction store path or URL.")
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs"),
    show_default=True,
    help="Where run folders (checkpoints, summary.csv) go.",
)
@click.option("--run-id", help="Run folder name. Default: <recipe>-s<seed>-<recipe hash>.")
@click.option("--resume", is_flag=True, help="Continue the run from its last.pth.")
@click.option("--epochs", type=click.IntRange(min=1), help="Training epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per batch.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Peak learning rate.")
@click.option("--img-size", type=click.IntRange(min=8), help="Training image size (pixels).")
@click.option("--mixup", type=click.FloatRange(min=0), help="Mixup alpha (0: off).")
@click.option("--cutmix", type=click.FloatRange(min=0), help="CutMix alpha (0: off).")
@click.option("--aa", metavar="POLICY|none", help="timm augmentation policy, e.g. original.")
@click.option("--vflip/--no-vflip", default=None, help="Random vertical flips.")
@click.option("--noise/--no-noise", default=None, help="Additive Gaussian noise, σ in [1, 20].")
@click.option("--seed", type=click.IntRange(min=0), help="Random seed.")
@click.option("--device", metavar="auto|cpu|cuda", help="Where to train (auto: CUDA if present).")
@click.option("--workers", type=click.IntRange(min=0), help="Data-loading processes.")
@click.option("--amp/--no-amp", default=None, help="Mixed precision (CUDA only).")
@click.option("--ema/--no-ema", default=None, help="Keep an exponential moving average model.")
@click.option(
    "--holdout",
    type=click.FloatRange(0, 1, max_open=True),
    help="Validate on this fraction of train instead of the val split.",
)
@click.option("--init", type=click.Choice(["xavier", "default"]), help="Weight initialisation.")
@click.option("--loss-param", multiple=True, metavar="KEY=VALUE", help="A loss parameter.")
@click.option("--test-sizes", metavar="N,N,...", help="Prediction sizes, e.g. 32,46,54.")
@click.option("--tta", metavar="VIEW,...", help="Test-time views, e.g. identity,hflip.")
@click.option(
    "--set",
    "set_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any other recipe field, e.g. --set scale=0.35,1 --set warmup_epochs=0.",
)
@click.pass_context
def produce_command(ctx: click.Context, recipe: str, data_dir: Path | None, store: str,
                    runs_dir: Path, resume: bool, **options: Any) -> None:  # fmt: skip
    """Train RECIPE and write its predictions into the store.

    RECIPE is <backbone>-<loss> (resnet18-taylor, resnest101-ce: see `ee recipes`), a YAML
    recipe file, or the name of a registered producer. Values you do not give come from the
    recipe, then from defaults sized for the data (the embedded digits, or ImageNet-like
    folders); the command prints which.

    \b
    Examples:
      ee produce resnet10t-ce --epochs 5
      ee produce resnet18-ls --loss-param smoothing=0.1 --set scale=0.35,1
      ee produce resnest101-taylor --data ./vipriors --store run.zarr --device cuda
      ee produce runs/resnet18-ce-s0-1a2b3c4d/recipe.yaml --resume
    """
    from rich.console import Console

    from ..store import open_store

    overrides = explicit_overrides(ctx, options)
    host = get_host()
    name = producer_for(recipe)
    producer = host.producers.get(name).factory()
    request = ProduceRequest(
        recipe=recipe,
        data_dir=data_dir,
        store=open_store(store, mode="a"),
        runs_dir=runs_dir,
        overrides=overrides,
        resume=resume,
        console=Console(stderr=True),
    )
    ids = producer.produce(request)
    if ids:
        click.echo(f"wrote {len(ids)} prediction(s) to {store}: {', '.join(ids)}")
    else:
        click.echo(f"{recipe}: done; no predictions written to {store}")


@click.command("recipes")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def recipes_command(as_json: bool) -> None:
    """List backbone aliases and losses for <backbone>-<loss> recipes.

    Any timm model name (`timm.list_models()`) is a backbone too.
    """
    from ee_timm.backbones import BACKBONE_ALIASES
    from ee_timm.recipe import PROFILE_NOTES

    losses = [
        {"name": e.name, "aliases": list(e.aliases), "description": e.description,
         "plugin": e.plugin}
        for e in get_host().losses
    ]  # fmt: skip
    if as_json:
        payload = {"backbones": BACKBONE_ALIASES, "losses": losses, "defaults": PROFILE_NOTES}
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
    profiles = Table("defaults", "values", title="defaults profiles")
    for profile, note in PROFILE_NOTES.items():
        profiles.add_row(profile, note)
    for table in (backbones, loss_table, profiles):
        console.print(table)
