"""The ``timm`` producer: resolve a recipe, register the data's splits, train, predict.

``produce`` is the whole of ``ee produce <backbone>-<loss>``: the recipe (with the defaults
profile that fits the data), the dataset (a folder, or the embedded digits when none is given),
the store's splits (registered before training, so that every producer's rows align), the
training run in ``runs/<run-id>/``, then ``predict``: the run's best checkpoint at every test
size × TTA views, streamed into the store (see ``prediction``). With a subset the run is a
specialist (see ``specialist``).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from ensemble_engine.data import DatasetSource, Sample, open_dataset, register_splits
from ensemble_engine.errors import DataError, RecipeError
from ensemble_engine.producer import Producer, ProduceRequest
from ensemble_engine.store import PredictionStore, check_name

from .prediction import (
    base_name,
    check_names_free,
    check_test_sizes,
    load_run,
    predict_run,
    prediction_splits,
)
from .recipe import PROFILE_NOTES, Recipe, resolve_recipe
from .specialist import (
    check_subset,
    map_to_subset,
    specialist_classes,
    specialist_training_samples,
)
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


def training_data(
    source: DatasetSource, recipe: Recipe
) -> tuple[list[Sample], list[Sample], list[str]]:
    """``(train, val, classes)`` of the run: a specialist's are resampled and relabelled."""
    train_samples, val_samples = training_samples(source, recipe)
    if not recipe.specialist:
        return train_samples, val_samples, list(source.classes)
    check_subset(recipe.subset, source.classes)
    train_samples = specialist_training_samples(
        train_samples, recipe.subset, source.classes, per_class=recipe.subset_per_class,
        other_per_class=recipe.other_per_class, seed=recipe.seed,
    )  # fmt: skip
    val_samples = map_to_subset(val_samples, recipe.subset, source.classes)
    return train_samples, val_samples, specialist_classes(recipe.subset)


def request_recipe(request: ProduceRequest) -> Recipe:
    """The request's recipe: its name or file, the profile that fits the data, the overrides,
    and the subset of a specialist run."""
    profile = "digits" if request.data_dir is None else "imagenet"
    overrides = dict(request.overrides)
    if request.subset is not None:
        overrides["subset"] = [str(c) for c in request.subset]
    return resolve_recipe(request.recipe, overrides, defaults=profile)


def predictions_table(store: PredictionStore, ids: list[str]) -> Table:
    """The metrics of the predictions just written, one row each."""
    table = Table("prediction", "top-1", "top-5", "nll", title="predictions", title_justify="left")
    for pred_id in ids:
        name, split = pred_id.split("/")
        metrics = store.get(name, split).metrics
        cells = [f"{metrics[k]:.4f}" if k in metrics else "—" for k in ("top1", "top5", "nll")]
        table.add_row(pred_id, *cells)
    return table


class TimmProducer(Producer):
    """Trains a timm backbone with a registered loss and writes its predictions."""

    def produce(self, request: ProduceRequest) -> list[str]:
        console = request.console or Console(stderr=True)
        recipe = request_recipe(request)
        console.print(f"[bold]{recipe.name}[/bold]: {PROFILE_NOTES[recipe.defaults]}")
        if request.overrides:
            given = ", ".join(f"{k}={v}" for k, v in sorted(request.overrides.items()))
            console.print(f"explicit options: {given}")
        source = open_dataset(request.data_dir)
        register_splits(request.store, source)
        check_test_sizes(recipe)
        if not request.force:
            name = request.name or base_name(recipe)
            check_names_free(request.store, name, recipe.test_sizes, prediction_splits(source))
        train_samples, val_samples, classes = training_data(source, recipe)
        what = f"specialist on {', '.join(recipe.subset)} + others, " if recipe.specialist else ""
        console.print(
            f"data: {source.root} ({what}{len(classes)} classes, {len(train_samples)} train, "
            f"{len(val_samples)} val images)"
        )
        run_dir = Path(request.runs_dir) / check_name(request.run_id or recipe.run_id(), "run id")
        try:
            result = train(
                recipe, train_samples, val_samples, classes, run_dir,
                resume=request.resume, console=console,
            )  # fmt: skip
        except KeyboardInterrupt:
            console.print(f"interrupted; add --resume to continue {run_dir} from its last epoch")
            raise
        return self.predict(request, recipe, result, source=source)

    def predict(
        self,
        request: ProduceRequest,
        recipe: Recipe,
        result: TrainResult,
        *,
        source: DatasetSource | None = None,
    ) -> list[str]:
        """Store the trained run's predictions (best checkpoint, every split but train, each
        test size × TTA views of ``recipe``); returns their ids."""
        console = request.console or Console(stderr=True)
        source = source or open_dataset(request.data_dir)
        splits = prediction_splits(source)
        if not splits:
            console.print(f"{source.root} has no split besides train: nothing to predict")
            return []
        ids = predict_run(
            load_run(result.best_path), source, request.store, recipe=recipe, splits=splits,
            name=request.name, replace=request.force, console=console,
        )  # fmt: skip
        console.print(predictions_table(request.store, ids))
        return ids
