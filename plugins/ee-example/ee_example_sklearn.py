"""An example third-party producer not built on timm: scikit-learn on pixels.

``ee produce sklearn-pixels --data DIR --store S`` shrinks every image to N×N grey pixels
(``--img-size N``, default 8), fits a logistic regression on the train split (on train+val minus
the store's held-out rows where the store has a holdout), and writes its probabilities on every
other split as ``sklearn-logreg-s<N>`` (``--name`` replaces ``sklearn-logreg``). It imports the
core only as ``from ensemble_engine import …``, like any plugin outside this repository.
"""

from __future__ import annotations

import numpy as np

from ensemble_engine import (
    HoldoutSource,
    Producer,
    ProduceRequest,
    RecipeError,
    StoreError,
    hookimpl,
    load_image,
    open_dataset,
    register_splits,
    trained_splits,
    with_store_holdout,
)

BACKBONE = "sklearn-logreg"
OPTIONS = ("img_size", "seed")  # the `ee produce` options this producer reads


def pixels(samples, size: int) -> np.ndarray:
    """[n, size*size] grey pixels in [0, 1], one row per sample."""
    rows = [np.asarray(load_image(s.path).convert("L").resize((size, size))) for s in samples]
    return np.stack(rows).reshape(len(rows), -1).astype(np.float64) / 255.0


class SklearnPixels(Producer):
    """Logistic regression on downscaled grey pixels; probabilities on every untrained split."""

    def produce(self, request: ProduceRequest) -> list[str]:
        unknown = sorted(set(request.overrides) - set(OPTIONS))
        if unknown or request.subset:
            given = ", ".join(unknown) if unknown else "subset"
            raise RecipeError(f"sklearn-pixels takes only --img-size and --seed, not {given}")
        size = int(request.overrides.get("img_size", 8))
        seed = int(request.overrides.get("seed", 0))
        source = open_dataset(request.data_dir)
        for split in source.split_names():  # every split read before the store is made
            source.samples(split)
        source = with_store_holdout(source, request.store)
        if isinstance(source, HoldoutSource):
            train = source.training_samples()[0]  # train+val minus the held-out rows
        else:
            train = source.samples("train")
        splits = [s for s in source.split_names() if s not in trained_splits(source)]
        name = f"{request.name or BACKBONE}-s{size}"
        taken = [f"{name}/{s}" for s in splits if request.store.exists(name, s)]
        if taken and not request.force:
            raise StoreError(f"prediction {taken[0]} already in {request.store.path}; pass "
                             "--force to replace, or --name to choose another name")  # fmt: skip
        register_splits(request.store, source)  # rows aligned with every other producer's

        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(max_iter=1000, random_state=seed)
        model.fit(pixels(train, size), [s.label for s in train])
        classes = list(source.classes)
        meta = {
            "backbone": BACKBONE,
            "loss": "log_loss",
            "test_size": size,
            "seed": seed,
            "source": {"type": "producer", "plugin": "ee_example_sklearn", "params": {}},
        }
        ids = []
        for split in splits:
            samples = source.samples(split)
            probs = np.zeros((len(samples), len(classes)), dtype=np.float32)
            if samples:  # a class absent from train keeps probability 0
                probs[:, model.classes_] = model.predict_proba(pixels(samples, size))
            pred = request.store.write_prediction(
                name, split, kind="probs", scores=probs, meta=meta, dtype="float32",
                replace=request.force,
            )  # fmt: skip
            ids.append(pred.id)
        return ids


@hookimpl
def register_producers(register):
    register("sklearn-pixels", SklearnPixels, description="logistic regression on grey pixels")
