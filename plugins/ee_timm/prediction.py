"""A trained run's predictions: its best checkpoint at every test size × TTA views, in the store.

What is predicted, and why:

- The **best** checkpoint (``best.pth``: the weights, EMA ones where the run kept an EMA, of
  the epoch with the best val top-1), as the seed ensemble used its best checkpoints. It is
  loaded with ``torch.load(weights_only=True)``, which runs no pickled code.
- **Every split but train**, unless the recipe's ``splits`` (``--splits``) says which (train
  too, for a prediction that will teach a distilled run, see ``distill``): train images were
  fitted, so their scores say little and would mislead a fusion graph's weights; val (the
  graph's fit split) and test are what fusion needs. On a store with a held-out split (``ee
  store init --holdout``) the run trained on train and val, so it predicts neither:
  ``holdout`` (the graph's fit split then) and test.
- At each of the recipe's ``test_sizes`` with its ``tta`` views merged by ``merge``, resized as
  in training's validation (timm's resize by ``crop_pct`` then centre crop, bilinear, ImageNet
  normalisation), so the identity view at the training size reproduces the run's val top-1.

Predictions are named ``<name>-s<size>`` (split separate, as the store names them), where
``name`` is ``[cov-]<backbone>-<loss>[-seed<N>]``: ``cov-`` marks a specialist (the seed graph
selects specialists by ``cov-*``), a seed other than 0 is named so that seeds of one recipe sit
side by side. The producer facts (``backbone``, ``loss``, ``seed``, ``recipe``, ``run``,
``source``, ``subset``, a distilled run's ``teacher``) are written with each; ``ee_tta`` adds
``test_size``, ``tta``, ``merge`` and ``cost``, whose FLOPs per image this plugin counts
(``flops``) once per test size.
"""

from __future__ import annotations

import json
import pickle
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ensemble_engine import (
    DataError,
    DatasetSource,
    HoldoutSource,
    RecipeError,
    StoreError,
    trained_splits,
)

from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from .recipe import FIELD_NAMES, PRODUCER_NAME, Recipe
from .specialist import check_subset, specialist_classes, subset_facts
from .transforms import EVAL_INTERPOLATION, MEAN, STD

if TYPE_CHECKING:
    from rich.console import Console
    from torch import nn

    from ensemble_engine import PredictionStore

    from .distributed import TorchGroup

BEST = "best.pth"
RUN_HOLDOUT = "holdout.json"  # the store's held-out split a run was trained around
PLUGIN = "ee_timm"


@dataclass(frozen=True)
class TrainedRun:
    """A checkpoint of a run folder: its recipe, class space and weights (a state dict)."""

    checkpoint: Path
    recipe: Recipe
    classes: list[str]
    epoch: int
    weights: dict[str, Any]

    @property
    def run_id(self) -> str:
        return self.checkpoint.parent.name

    def model(self) -> nn.Module:
        """The backbone with the checkpoint's weights, in eval mode."""
        from .builders import build_model

        model = build_model(self.recipe.replace(init="default"), len(self.classes))
        model.load_state_dict(self.weights)
        return model.eval()


def load_run(path: Path | str) -> TrainedRun:
    """A run folder (its ``best.pth``) or a checkpoint file written by the training loop."""
    path = Path(path)
    checkpoint = path / BEST if path.is_dir() else path
    if not checkpoint.is_file():
        raise RecipeError(
            f"{path} holds no {BEST}: not a trained run folder; train it with `ee produce`, or "
            "give a checkpoint file"
        )
    try:
        with warnings.catch_warnings():  # torch warns before failing on a foreign file
            warnings.simplefilter("ignore")
            saved = load_checkpoint(checkpoint)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, struct.error):
        # weights_only refuses pickled objects: a foreign or damaged file, never executed.
        raise RecipeError(
            f"{checkpoint} is not a checkpoint written by `ee produce` (not a torch file, or it "
            "holds objects besides tensors and plain values); give a run folder or its best.pth"
        ) from None
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        raise RecipeError(
            f"{checkpoint} is not an {PLUGIN} checkpoint (no format tag); give a run folder or "
            "a best.pth/last.pth written by `ee produce`"
        )
    recipe_dict = {k: v for k, v in saved["recipe"].items() if k in FIELD_NAMES}
    return TrainedRun(
        checkpoint=checkpoint,
        recipe=Recipe(**recipe_dict),
        classes=[str(c) for c in saved["classes"]],
        epoch=int(saved.get("epoch", 0)),
        weights=saved["model"],
    )


def base_name(recipe: Recipe) -> str:
    """``[cov-]<backbone>-<loss>[-seed<N>]``: the predictions' name before ``-s<size>``."""
    prefix = "cov-" if recipe.specialist else ""
    suffix = f"-seed{recipe.seed}" if recipe.seed else ""
    return f"{prefix}{recipe.name}{suffix}"


def prediction_splits(source: DatasetSource, requested: Sequence[str] | None = None) -> list[str]:
    """The splits to predict: ``requested``, or every split of the data except those trained on
    (train; train and val under a store's held-out split)."""
    known = source.split_names()
    if requested is None:
        return [s for s in known if s not in trained_splits(source)]
    missing = [s for s in requested if s not in known]
    if missing:
        raise DataError(
            f"{source.root} has no split {', '.join(missing)} (splits: {', '.join(known)}); "
            "choose from those"
        )
    return list(requested)


def check_names_free(
    store: PredictionStore,
    name: str,
    sizes: Sequence[int],
    splits: Sequence[str],
    *,
    own_run: str | None = None,
) -> None:
    """Refuse, before any work, predictions that exist already (unless replaced); those that
    run ``own_run`` wrote (its ``run`` attr) do not count: resuming it redoes them."""
    taken = [
        f"{name}-s{s}/{sp}"
        for s in sizes
        for sp in splits
        if store.exists(f"{name}-s{s}", sp)
        and (own_run is None or store.get(f"{name}-s{s}", sp).attrs.get("run") != own_run)
    ]
    if taken:
        more = f" and {len(taken) - 1} more" if len(taken) > 1 else ""
        raise StoreError(
            f"prediction {taken[0]}{more} already in {store.path}; pass --force to replace, "
            "or --name to choose another name"
        )


def write_run_holdout(run_dir: Path, source: DatasetSource) -> None:
    """Record in ``run_dir`` the store's held-out split the run trains around, so that a later
    ``ee predict`` can tell whether a store's splits hold rows the run trained on."""
    if isinstance(source, HoldoutSource) and not (run_dir / RUN_HOLDOUT).exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RUN_HOLDOUT).write_text(json.dumps(source.record.to_attrs()) + "\n")


def check_run_holdout(run: TrainedRun, source: DatasetSource) -> None:
    """``DataError`` unless ``run`` was trained around the held-out split of the store that
    ``source`` carries (none for none): otherwise a predicted split holds rows it trained on."""
    path = run.checkpoint.parent / RUN_HOLDOUT
    try:
        trained = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        trained = "unreadable"
    store = source.record.to_attrs() if isinstance(source, HoldoutSource) else None
    if trained == store:
        return
    if store is None:
        raise DataError(
            f"run {run.run_id} trained on train+val minus a store's held-out split ({path}), and "
            "this store has none: its val predictions would score images it trained on; "
            "predict into the store it was trained for"
        )
    what = "on train, validated on val" if trained is None else f"around another holdout {path}"
    raise DataError(
        f"run {run.run_id} was trained {what}, and this store's split {source.record.split!r} "
        f"({source.record.describe()}) holds rows it trained on: predict into another store, "
        "or train a run on this store with `ee produce`"
    )


def check_test_sizes(recipe: Recipe) -> None:
    """A fixed-input-size backbone (a ViT at 224, say) takes no other test size: say so now,
    not after training (``ee_tta`` checks the built model again before predicting)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(recipe.backbone)
    if cfg is None or not cfg.fixed_input_size:
        return
    native = cfg.input_size[-1]
    other = [s for s in recipe.test_sizes if s != native]
    if other:
        raise RecipeError(
            f"backbone {recipe.backbone} takes only {native}-pixel inputs, not test size(s) "
            f"{', '.join(map(str, other))}; use --test-sizes {native}"
        )


def check_classes(run: TrainedRun, source: DatasetSource) -> list[str] | None:
    """The class list to hand the store: None for the data's classes, else the specialist's."""
    recipe = run.recipe
    if recipe.specialist:
        check_subset(recipe.subset, source.classes)
        expected = specialist_classes(recipe.subset)
    else:
        expected = list(source.classes)
    if run.classes != expected:
        raise DataError(
            f"{run.checkpoint} was trained on classes {run.classes[:6]}… ({len(run.classes)}), "
            f"not those of {source.root}; predict on the data it was trained on (--data)"
        )
    return expected if recipe.specialist else None


def plugin_version() -> str:
    from ensemble_engine import plugin_info

    info = plugin_info(PLUGIN)
    return info.version if info is not None else "?"


def prediction_meta(run: TrainedRun, recipe: Recipe) -> dict[str, Any]:
    """The producer facts every prediction of ``run`` carries (``ee_tta`` adds its own)."""
    meta: dict[str, Any] = {
        "backbone": recipe.backbone,
        "loss": recipe.loss,
        "seed": recipe.seed,
        "recipe": recipe.to_dict(),
        "run": run.run_id,
        "source": {
            "type": "producer",
            "plugin": PLUGIN,
            "plugin_version": plugin_version(),
            "params": {
                "producer": PRODUCER_NAME,
                "checkpoint": run.checkpoint.name,
                "epoch": run.epoch,
            },
        },
    }
    if recipe.teacher:  # a distilled run: the stored prediction it learnt from
        meta["teacher"] = recipe.teacher
    if recipe.specialist:
        meta["subset"] = subset_facts(
            recipe.subset, recipe.subset_per_class, recipe.other_per_class
        )
    return meta


def predict_run(
    run: TrainedRun,
    source: DatasetSource,
    store: PredictionStore,
    *,
    recipe: Recipe | None = None,
    splits: Sequence[str] | None = None,
    name: str | None = None,
    replace: bool = False,
    keep_views: bool = False,
    console: Console | None = None,
    group: TorchGroup | None = None,
) -> list[str]:
    """Predict ``splits`` of ``source`` at the recipe's test sizes × views; returns the ids.

    ``recipe`` defaults to the run's own; pass one to predict at other sizes, views, merge,
    batch size or device (values that leave the weights alone). Under torchrun every rank
    calls this with its ``group``, predicts its share of the rows on its own device, and
    gets the same ids back.
    """
    from ee_tta import predict_sizes

    from .builders import resolve_device
    from .flops import forward_gflops

    recipe = recipe or run.recipe
    classes = check_classes(run, source)
    check_run_holdout(run, source)
    splits = prediction_splits(source, splits)
    name = name or base_name(recipe)
    if not replace:
        check_names_free(store, name, recipe.test_sizes, splits)
    model = run.model()
    return predict_sizes(
        model,
        source,
        splits,
        list(recipe.test_sizes),
        list(recipe.tta),
        store=store,
        name=name,
        console=console,
        merge=recipe.merge,
        batch_size=recipe.batch_size,
        device=resolve_device(recipe.device) if group is None else group.device,
        crop_pct=recipe.crop_pct,
        interpolation=EVAL_INTERPOLATION,
        mean=MEAN,
        std=STD,
        workers=recipe.workers,
        seed=recipe.seed,
        meta=prediction_meta(run, recipe),
        replace=replace,
        keep_views=keep_views,
        classes=classes,
        group=group,
        gflops=forward_gflops(model, recipe.test_sizes),
    )
