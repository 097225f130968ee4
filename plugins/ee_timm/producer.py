"""The ``timm`` producer: resolve a recipe, register the data's splits, train a backbone.

``produce`` is the whole of ``ee produce <backbone>-<loss>``: the recipe (with the defaults
profile that fits the data), the dataset (a folder, or the embedded digits when none is given),
the store's splits (registered before training, so that every producer's rows align), then the
training run in ``runs/<run-id>/``. ``predict`` turns a finished run into store predictions.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ensemble_engine.data import DatasetSource, Sample, open_dataset, register_splits
from ensemble_engine.errors import DataError, RecipeError
from ensemble_engine.producer import Producer, ProduceRequest

from .recipe import PROFILE_NOTES, Recipe, resolve_recipe
from .train import TrainResult, train

TRAIN_SPLIT = "train"
VAL_SPLIT = "val"


def training_samples(source: DatasetSource, recipe: Recipe) -> tuple[list[Sample], list[Sample]]:
    """``(train, val)``: the train split, validated on the val split or on a hold-out of train."""
    if TRAIN_SPLIT not in source.split_names():
        raise DataError(f"{source.root} has no train split; add train/<class>/ folders")
    samples = source.samples(TRAIN_SPLIT)
    if recipe.holdout > 0:
        from ee_data import holdout_split

        return holdout_split(samples, recipe.holdout, recipe.seed)
    if VAL_SPLIT not in source.split_names():
        raise RecipeError(
            f"{source.root} has no val split to validate on; pass --holdout 0.1 to hold out "
            "10% of train instead"
        )
    val = [s for s in source.samples(VAL_SPLIT) if s.label >= 0]
    return samples, val


class TimmProducer(Producer):
    """Trains a timm backbone with a registered loss (and, with ``predict``, writes its scores)."""

    def produce(self, request: ProduceRequest) -> list[str]:
        console = request.console or Console(stderr=True)
        if request.subset is not None:
            raise RecipeError(
                "the timm producer trains on all classes; class-subset (specialist) runs are not "
                "available in this version, drop the subset"
            )
        overrides = dict(request.overrides)
        run_id = overrides.pop("run_id", None)
        profile = "digits" if request.data_dir is None else "imagenet"
        recipe = resolve_recipe(request.recipe, overrides, defaults=profile)
        console.print(f"[bold]{recipe.name}[/bold]: {PROFILE_NOTES[recipe.defaults]}")
        if overrides:
            given = ", ".join(f"{k}={v}" for k, v in sorted(overrides.items()))
            console.print(f"explicit options: {given}")
        source = open_dataset(request.data_dir)
        register_splits(request.store, source)
        train_samples, val_samples = training_samples(source, recipe)
        console.print(
            f"data: {source.root} ({len(source.classes)} classes, {len(train_samples)} train, "
            f"{len(val_samples)} val images)"
        )
        run_dir = Path(request.runs_dir) / (run_id or recipe.run_id())
        try:
            result = train(
                recipe, train_samples, val_samples, source.classes, run_dir,
                resume=request.resume, console=console,
            )  # fmt: skip
        except KeyboardInterrupt:
            console.print(f"interrupted; add --resume to continue {run_dir} from its last epoch")
            raise
        return self.predict(request, recipe, result)

    def predict(self, request: ProduceRequest, recipe: Recipe, result: TrainResult) -> list[str]:
        """Store predictions of the trained run; returns their ids. Writes none yet."""
        return []
