"""``ee produce``: train a model and write its predictions, through a producer plugin.

Only the options a user actually gives reach the producer (``ProduceRequest.overrides``); every
other value comes from the recipe and its defaults profile, so a recipe file is never silently
overridden by a command-line default. The run folder, prediction name, subset and ``--force``
are request fields of their own: they say where results go, not how to train.

Several processes: ``torchrun --nproc_per_node N -m ensemble_engine produce ...`` runs N copies
of the command, and each producer takes its share (for ``timm``: ``ee_timm.distributed``).
``ee produce --nproc N`` is the one-machine shortcut: it re-runs the same command under
torchrun (``torch.distributed.run --standalone``, through ``commands.torchrun``) and exits
with torchrun's exit code, or with 2 and the rank's one-line error alone when a rank stops on
a user error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
import yaml
from click.core import ParameterSource

from ..errors import DataError, PluginError, RecipeError
from ..plugins import get_host
from ..producer import Producer, ProduceRequest
from ..strict_yaml import load_yaml
from .launch import (
    BACKEND_ENV,
    launch_torchrun,
    open_store_for_producer,
    under_torchrun,
)
from .produce_plan import echo_plan

DEFAULT_PRODUCER = "timm"
RECIPE_SUFFIXES = (".yaml", ".yml")

# Options given as text: comma lists (→ element type) and repeated KEY=VALUE (→ override key).
_LIST_OPTIONS = {"test_sizes": int, "tta": str, "splits": str}
_PAIR_OPTIONS = {"loss_param": "loss_params", "set_pairs": "set"}
# Every option that becomes an override when given.
_OVERRIDE_OPTIONS = (
    "epochs", "batch_size", "lr", "img_size", "mixup", "cutmix", "aa", "vflip", "noise", "seed",
    "device", "workers", "amp", "ema", "holdout", "init", "test_sizes", "tta", "loss_param",
    "set_pairs", "subset_per_class", "other_per_class", "teacher", "splits",
)  # fmt: skip
_SUBSET_OPTIONS = ("subset_per_class", "other_per_class")


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
    if not text.strip():
        return text
    try:
        return load_yaml(text)
    except yaml.YAMLError:
        raise click.BadParameter(
            f"{text!r} is neither a number nor a YAML value (quote text, close brackets)",
            param_hint="--loss-param",
        ) from None


def split_list(text: str, kind: type, option: str) -> list[Any]:
    """``"1, 2,3"`` as ``[1, 2, 3]`` (``kind`` per item); ``BadParameter`` naming ``option``."""
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
            overrides[name] = split_list(value, _LIST_OPTIONS[name], option)
        elif name == "aa":
            overrides[name] = None if value.strip().lower() == "none" else value
        else:
            overrides[name] = value
    return overrides


def read_class_list(path: Path) -> list[str]:
    """Class ids, one per line (as ``ee weak-classes`` writes them); ``#`` starts a comment."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a BOM is not a class id
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read class list {path}: {exc}; give a UTF-8 text file") from None
    ids = [line.split("#", 1)[0].strip() for line in lines]
    ids = [i for i in ids if i]
    if not ids:
        raise DataError(f"class list {path} names no class; write one class id per line")
    return ids


def producer_for(recipe: str) -> str:
    """Which producer runs RECIPE: its own name, a recipe file's ``producer:``, else timm."""
    if recipe in get_host().producers:
        return recipe
    if recipe.lower().endswith(RECIPE_SUFFIXES):
        path = Path(recipe)
        if not path.is_file():
            raise RecipeError(f"recipe file {path} does not exist; check the path")
        try:
            data = load_yaml(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError, OSError):
            return DEFAULT_PRODUCER  # its recipe loader names the fault in one line
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
@click.option(
    "--name",
    help="Prediction name before -s<size>. Default: [cov-]<backbone>-<loss>[-seed<N>].",
)
@click.option("--force", is_flag=True, help="Replace existing predictions of the same names.")
@click.option("--resume", is_flag=True, help="Continue the run from its last.pth.")
@click.option(
    "--plan",
    is_flag=True,
    help="Show what would be done (the resolved recipe, each value's origin, the run id, the "
    "predictions it would write) after the checks a run starts with; train and write nothing.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='With --plan: print it as JSON, {"recipe": {field: value}, "sources": {field: origin}, '
    '"run_id": ID, "predictions": [NAME/SPLIT, ...], "notes": [line, ...], ...}.',
)
@click.option("--epochs", type=click.IntRange(min=1), help="Training epochs.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    help="Images per batch (per process, with --nproc or torchrun).",
)
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
    help="Validate on this fraction of train instead of the val split, in this run alone "
    "(the seed's fusion split, shared by every run: `ee store init --holdout`).",
)
@click.option("--init", type=click.Choice(["xavier", "default"]), help="Weight initialisation.")
@click.option("--loss-param", multiple=True, metavar="KEY=VALUE", help="A loss parameter.")
@click.option("--test-sizes", metavar="N,N,...", help="Prediction sizes, e.g. 32,46,54.")
@click.option("--tta", metavar="VIEW,...", help="Test-time views, e.g. identity,hflip.")
@click.option(
    "--splits",
    metavar="SPLIT,...",
    help="Splits to predict after training, e.g. train,val,test (train for a teacher). "
    "Default: all but train (and but val on a store with a holdout).",
)
@click.option(
    "--teacher",
    metavar="NAME",
    help="Distil: train on this stored prediction's soft targets on train plus the labels "
    "(--set kd_temperature=T --set kd_alpha=A; see `ee recipes`).",
)
@click.option(
    "--subset",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Train a specialist on the class ids listed in this file (see `ee weak-classes`).",
)
@click.option(
    "--subset-per-class",
    type=click.IntRange(min=1),
    help="Specialist: training images per listed class, resampled (recipe default 500).",
)
@click.option(
    "--other-per-class",
    type=click.IntRange(min=1),
    help="Specialist: random images per other class, labelled __other__ (recipe default 5).",
)
@click.option(
    "--set",
    "set_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any other recipe field, e.g. --set scale=0.35,1 --set warmup_epochs=0.",
)
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    help="Train and predict with N processes on this machine (one per GPU, or N on the CPU): "
    "re-runs this command under torchrun. Each process takes --batch-size images a step, so "
    "the global batch is N × batch size, as in timm's train.py. Several machines: run torchrun "
    "yourself (torchrun --nnodes ... -m ensemble_engine produce ...).",
)
@click.option(
    "--dist-backend",
    type=click.Choice(["nccl", "gloo"]),
    help="torch.distributed backend with --nproc or under torchrun (default: nccl on CUDA, "
    "gloo on CPU).",
)
@click.pass_context
def produce_command(ctx: click.Context, recipe: str, data_dir: Path | None, store: str,
                    runs_dir: Path, run_id: str | None, name: str | None, force: bool,
                    resume: bool, plan: bool, as_json: bool, subset: Path | None,
                    nproc: int | None, dist_backend: str | None,
                    **options: Any) -> None:  # fmt: skip
    """Train RECIPE and write its predictions into the store.

    RECIPE is <backbone>-<loss> (resnet18-taylor, resnest101-ce: see `ee recipes`), a YAML
    recipe file, or the name of a registered producer. Values you do not give come from the
    recipe, then from a defaults profile chosen from the data's images: digits (32 px) where
    the median shorter side of up to 64 sampled images is below 64 px, and without --data,
    else imagenet (the seed's, 224 px); --set defaults=NAME chooses. The command prints which
    profile and why.

    After training, the best checkpoint predicts every split but train (--splits chooses, e.g.
    train,val,test for a model that will teach) at each test size (default: 224,320,380 for
    224-pixel training, the same ratios otherwise, e.g. 32,46,54) with the recipe's TTA views
    (default identity,hflip; identity alone on the digits, which train without flips), one
    prediction per split and size: <name>-s<size>.

    With --teacher NAME the run distils a stored prediction (a fused one, applied to train:
    ee combine GRAPH --apply train,val,test): its loss adds the teacher's soft targets on train
    to the labels (kd_temperature, kd_alpha: see `ee recipes`).

    With --subset the run is a specialist: the listed classes plus one __other__ class; its
    predictions are named cov-<backbone>-<loss>-s<size>.

    With --plan nothing is trained and nothing is written (no run folder, no store, no
    splits): the command runs the checks a run starts with and prints the resolved recipe (each
    value with its origin: recipe name, recipe file PATH, profile NAME, default, command line
    --OPTION, or how it was derived), the run id and the predictions the run would write
    (--nproc starts no process).

    \b
    Examples:
      ee produce resnet10t-ce --epochs 5
      ee produce resnet18-ls --loss-param smoothing=0.1 --set scale=0.35,1
      ee produce resnest101-taylor --data ./vipriors --store run.zarr --device cuda
      ee produce runs/resnet18-ce-s0-1a2b3c4d/recipe.yaml --resume
      ee weak-classes ee.zarr resnet18-ce-s46 -o weak.txt
      ee produce resnet18-ce --subset weak.txt --subset-per-class 500
      ee produce resnet18-ce --nproc 4           4 GPUs (or CPU processes), one machine
      ee produce resnet18-ls --data ./vipriors --plan --json
      ee produce resnet18-ce --splits train,val,test     then ee combine ... --apply train,...
      ee produce resnet10t-ce --teacher fused --set kd_alpha=0.9
    """
    from rich.console import Console

    overrides = explicit_overrides(ctx, options)
    if subset is None and any(k in overrides for k in _SUBSET_OPTIONS):
        raise click.UsageError("--subset-per-class and --other-per-class need --subset FILE")
    if as_json and not plan:
        raise click.UsageError("--json goes with --plan (ee produce RECIPE --plan --json)")
    if plan and under_torchrun():
        raise click.UsageError("--plan trains nothing: run it without torchrun")
    if nproc is not None and under_torchrun():
        raise click.UsageError("--nproc starts torchrun itself; leave it out under torchrun")
    if dist_backend is not None and not (under_torchrun() or (nproc or 1) > 1):
        raise click.UsageError("--dist-backend needs several processes: add --nproc N")
    host = get_host()
    producer_name = producer_for(recipe)
    producer = host.producers.get(producer_name).factory()
    shared_store = open_store_for_producer(store)  # a bad store fails here, before any launch
    if dist_backend is not None and nproc is None:
        os.environ[BACKEND_ENV] = dist_backend  # this process is one of torchrun's
    request = ProduceRequest(
        recipe=recipe,
        data_dir=data_dir,
        store=shared_store,
        runs_dir=runs_dir,
        overrides=overrides,
        resume=resume,
        subset=read_class_list(subset) if subset is not None else None,
        console=Console(stderr=True),
        run_id=run_id,
        name=name,
        force=force,
    )
    if plan:
        if getattr(type(producer), "plan", Producer.plan) is Producer.plan:
            raise PluginError(
                f"producer {producer_name!r} cannot show a plan (it has no plan()); run "
                "without --plan"
            )
        echo_plan(recipe, producer_name, producer.plan(request), as_json)
        return
    if nproc is not None and nproc > 1:
        producer.check(request)  # a bad recipe or data folder fails here, before any launch
        ctx.exit(launch_torchrun(ctx, nproc, dist_backend))
    ids = producer.produce(request)
    if os.environ.get("RANK", "0") != "0":
        return  # rank 0 reports for every rank
    if ids:
        click.echo(f"wrote {len(ids)} prediction(s) to {store}: {', '.join(ids)}")
    else:
        click.echo(f"{recipe}: done; no predictions written to {store}")
