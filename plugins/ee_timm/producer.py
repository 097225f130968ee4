"""The ``timm`` producer: resolve a recipe, register the data's splits, train, predict.

``produce`` is the whole of ``ee produce <backbone>-<loss>``: the recipe (with the defaults
profile that fits the data), the dataset (a folder, or the embedded digits when none is given),
the store's splits (registered before training, so that every producer's rows align), the
training run in ``runs/<run-id>/``, then ``predict``: the run's best checkpoint at every test
size × TTA views, streamed into the store (see ``prediction``). With a subset the run is a
specialist (see ``specialist``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from ensemble_engine import (
    DataError,
    DatasetSource,
    HoldoutSource,
    PredictionStore,
    Producer,
    ProduceRequest,
    RecipeError,
    Sample,
    StoreError,
    StoreLock,
    StoreOnFirstUse,
    check_name,
    holdout_split,
    on_rank0,
    open_dataset,
    open_store,
    register_splits,
    with_store_holdout,
)

from .builders import resolve_device
from .checkpoint import read_resumable
from .data_profile import resolve_request
from .distill import target_rows
from .distributed import Launch, TorchGroup, backend_for, process_group, rank_device
from .prediction import (
    base_name,
    check_names_free,
    check_test_sizes,
    load_run,
    predict_run,
    prediction_splits,
    write_run_holdout,
)
from .recipe import PROFILE_NOTES, Recipe
from .specialist import (
    check_subset,
    map_to_subset,
    specialist_classes,
    specialist_training_samples,
)
from .train import TrainResult, train

if TYPE_CHECKING:
    import torch

TRAIN_SPLIT = "train"
VAL_SPLIT = "val"


def training_samples(source: DatasetSource, recipe: Recipe) -> tuple[list[Sample], list[Sample]]:
    """``(train, val)``: the train split, validated on the val split or on a hold-out of train;
    on a store with a held-out split (a ``HoldoutSource``), train+val minus it, validated on it.
    """
    if isinstance(source, HoldoutSource):
        if recipe.holdout > 0:
            raise RecipeError(
                f"the store holds a held-out split ({source.record.describe()}) to validate "
                f"and fuse on, and the recipe sets holdout {recipe.holdout:g} as well: drop "
                "--holdout (or holdout: from the recipe), or use a store without a holdout"
            )
        return source.training_samples()
    if TRAIN_SPLIT not in source.split_names():
        raise DataError(f"{source.root} has no train split; add train/<class>/ folders")
    samples = source.samples(TRAIN_SPLIT)
    if recipe.holdout > 0:
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
    """The request's recipe: its name or file, the profile that fits the data (see
    ``data_profile``), the overrides, and the subset of a specialist run."""
    return resolve_request(request).recipe


def data_source(request: ProduceRequest) -> DatasetSource:
    """The request's data, every split scanned (damaged images are skipped now, not met in
    training), with the store's held-out split where the store records one; a store not
    created yet is not created here (it has no holdout)."""
    source = open_dataset(request.data_dir)
    for split in source.split_names():
        source.samples(split)
    if isinstance(request.store, StoreOnFirstUse):
        return source
    return with_store_holdout(source, request.store)


def holdout_line(source: HoldoutSource) -> str:
    """What a run on a store with a held-out split trains and validates on, in one line."""
    record, held = source.record, source.training_samples()[1]
    return (
        f"training on {'+'.join(record.sources)} minus the store's {record.split} split "
        f"({len(held)} images), validating on {record.split}"
    )


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
    """Trains a timm backbone with a registered loss and writes its predictions.

    Under torchrun (see ``distributed``) every rank runs ``produce``: each checks the recipe
    and the data before the ranks join, so a mistake stops them all at once; rank 0 alone
    registers the splits, checks the names, writes the run folder and prints; all ranks train
    and predict together.
    """

    def check(self, request: ProduceRequest) -> None:
        """The checks ``produce`` starts with, in the process that launches the ranks."""
        checked_request(request, None, launching=True)

    def plan(self, request: ProduceRequest) -> dict[str, Any]:
        """What ``produce`` would do, found by its own checks; trains and writes nothing."""
        from .plan import plan_request

        return plan_request(request)

    def produce(self, request: ProduceRequest) -> list[str]:
        launch = Launch.from_env()
        console = request.console or Console(stderr=True)
        if launch is not None and launch.rank > 0:
            console = Console(stderr=True, quiet=True)
        resolved = resolve_request(request)
        recipe = resolved.recipe
        console.print(f"[bold]{recipe.name}[/bold]: {PROFILE_NOTES[recipe.defaults]}")
        console.print(resolved.defaults_line, markup=False)
        if request.overrides:
            given = ", ".join(f"{k}={v}" for k, v in sorted(request.overrides.items()))
            console.print(f"explicit options: {given}")
        ok = checked_request(request, launch, recipe=recipe)
        source, recipe, run_id, device = ok.source, ok.recipe, ok.run_id, ok.device
        train_samples, val_samples, classes = ok.train_samples, ok.val_samples, ok.classes
        run_lock = RunLock(Path(request.runs_dir) / run_id)
        with process_group(launch, device) as group, contextlib.ExitStack() as held:

            def prepare() -> None:
                self.prepare_store(request, recipe, source, run_id)
                run_lock.acquire()
                held.callback(run_lock.release)
                write_run_holdout(run_lock.run_dir, source)

            on_rank0(group, prepare)
            if group is not None:
                run_id = group.broadcast(run_id)
                # this rank's store object predates the splits rank 0 registered: reopen it
                request = replace(request, store=open_store(request.store.path, mode="a"))
            what = ""
            if recipe.specialist:
                what = f"specialist on {', '.join(recipe.subset)} + others, "
            ranks = f"; {group.size} processes, {backend_for(device)}" if group else ""
            console.print(
                f"data: {source.root} ({what}{len(classes)} classes, {len(train_samples)} train, "
                f"{len(val_samples)} val images{ranks})"
            )
            if isinstance(source, HoldoutSource):
                console.print(holdout_line(source), soft_wrap=True)
            run_dir = Path(request.runs_dir) / run_id
            try:
                result = train(
                    recipe, train_samples, val_samples, classes, run_dir,
                    resume=request.resume, console=console, group=group, targets=ok.targets,
                )  # fmt: skip
            except KeyboardInterrupt:
                console.print(f"interrupted; add --resume to continue {run_dir} from its last "
                              "epoch")  # fmt: skip
                raise
            return self.predict(request, recipe, result, source=source, group=group)

    def prepare_store(
        self, request: ProduceRequest, recipe: Recipe, source: DatasetSource, run_id: str
    ) -> None:
        """Refuse taken names, then register the data's splits (on rank 0 under torchrun); on
        ``--resume`` the run's own predictions (from before an interruption) are not taken. A
        split whose images changed since it was registered is refused, naming the command that
        re-registers it (``ee store init STORE --data DIR --replace-splits``)."""
        if not request.force:  # checked first: a refused command registers nothing either
            name = request.name or base_name(recipe)
            own = run_id if request.resume else None
            splits = prediction_splits(source, recipe.splits or None)
            check_names_free(request.store, name, recipe.test_sizes, splits, own_run=own)
        register_splits(request.store, source)  # every split checked before any is written

    def predict(
        self,
        request: ProduceRequest,
        recipe: Recipe,
        result: TrainResult,
        *,
        source: DatasetSource | None = None,
        group: TorchGroup | None = None,
    ) -> list[str]:
        """Store the trained run's predictions (best checkpoint, the recipe's ``splits`` or every
        split but train, each test size × TTA views of ``recipe``); returns their ids. Under
        torchrun every rank calls this with its ``group``; rank 0 alone prints."""
        shown = group is None or group.rank == 0
        console = (request.console or Console(stderr=True)) if shown else None
        source = source or data_source(request)
        splits = prediction_splits(source, recipe.splits or None)
        if not splits:
            if console is not None:
                console.print(f"{source.root} has no split besides train: nothing to predict")
            return []
        run = load_run(result.best_path)
        replace = request.force
        if request.resume and not replace:  # the interrupted run's own predictions are redone
            name = request.name or base_name(recipe)
            check_names_free(request.store, name, recipe.test_sizes, splits, own_run=run.run_id)
            replace = True
        ids = predict_run(
            run, source, request.store, recipe=recipe, splits=splits,
            name=request.name, replace=replace, console=console, group=group,
        )  # fmt: skip
        if console is not None:
            console.print(predictions_table(request.store, ids))
        return ids


@dataclass(frozen=True)
class CheckedRequest:
    """What ``checked_request`` found: the request's recipe, data and run, all usable."""

    recipe: Recipe
    source: DatasetSource
    train_samples: list[Sample]
    val_samples: list[Sample]
    classes: list[str]
    device: torch.device
    run_id: str
    targets: torch.Tensor | None = None  # a distilled run's [label | teacher] rows (distill)


def checked_request(
    request: ProduceRequest,
    launch: Launch | None,
    *,
    launching: bool = False,
    recipe: Recipe | None = None,
) -> CheckedRequest:
    """Check everything about ``request`` that needs no store: the recipe, the data, the
    device, the names; under torchrun (``launch``) or before starting it (``launching``) also
    the backend and that the store is one every rank reaches. Raises the first problem.
    ``recipe``: the request's, when the caller has resolved it already."""
    recipe = recipe or request_recipe(request)
    source = data_source(request)
    check_test_sizes(recipe)
    train_samples, val_samples, classes = training_data(source, recipe)
    device = rank_device(resolve_device(recipe.device), launch)
    if launch is not None or launching:
        backend_for(device)  # a bad EE_DIST_BACKEND stops every rank before they join
        check_shared_store(request.store)
    run_id = check_name(request.run_id or recipe.run_id(), "run id")
    name = request.name or base_name(recipe)
    for size in recipe.test_sizes:
        check_name(f"{name}-s{size}", "prediction name")
    run_dir = Path(request.runs_dir) / run_id
    if request.resume and not run_dir.is_dir():
        raise RecipeError(
            f"no run to resume in {run_dir}; drop --resume to start it, or give the "
            "--run-id of an earlier run"
        )
    if request.resume and (run_dir / "last.pth").exists():
        read_resumable(run_dir / "last.pth", mmap=True)  # damaged: refused before any write
    prediction_splits(source, recipe.splits or None)  # an unknown split: refused now
    targets = None
    if recipe.teacher:  # the teacher, looked up in the store before anything is written
        targets = target_rows(request.store, recipe, source, train_samples, classes)
    return CheckedRequest(
        recipe, source, train_samples, val_samples, classes, device, run_id, targets
    )


class RunLock:
    """One process trains in a run folder at a time: a second is refused at once, naming the
    holder. The lock file lives in the folder (``.run.locks/owner.lock``); a killed holder's
    lock is broken by the next run, as the store's locks are (``ensemble_engine.locks``)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.lock = StoreLock(str(run_dir / "run"), "owner", timeout=0, on_wait=None)

    def acquire(self) -> None:
        try:
            self.lock.acquire()
        except StoreError:
            holder = self.lock.holder() or {}
            raise StoreError(
                f"run folder {self.run_dir} is in use by pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')} (lock {self.lock.path}); wait for that run to "
                "finish, or give another --run-id"
            ) from None

    def release(self) -> None:
        self.lock.release()
        with contextlib.suppress(OSError):  # the run folder keeps only the run's own files
            Path(self.lock.path).parent.rmdir()


def check_shared_store(store: PredictionStore) -> None:
    """Ranks are processes of their own: a store in one process's memory is not shared."""
    if store.path.startswith("memory://"):
        raise StoreError(
            f"store {store.path} lives in one process's memory; under torchrun give a path or "
            "URL that every rank reaches"
        )
