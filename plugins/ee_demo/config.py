"""What the demo trains and fuses: the seed's ensemble, scaled to 32-pixel digits on two cores.

The seed (VIPriors 2021) trained big backbones with three losses (its Table I), a few more
backbones with one loss (Tables II–III), predicted each at three test sizes, fused them in
stages and covered its weak classes with specialists. The demo keeps that shape; its sizes come
from measurements on this data (12 epochs, batch 32, one thread, CPU seconds per run):

- Backbones: timm's tiny ``test_*`` models (0.1–0.4 M parameters). ``test_resnet`` and
  ``test_efficientnet`` reach ~97% test top-1 in ~15 s, ``test_mambaout`` ~95%, the EvoNorm,
  ByobNet and GroupNorm variants 78–94%; ``mobilenetv3_small_050``, ``regnetx_002`` and
  ``test_nfnet`` need 2–3× the time for 67–91%, and ``test_efficientnet_ln`` diverges.
- Test sizes: a 32-pixel input leaves a 1×1 map after a stride-32 backbone; a larger size
  changes the map (2×2 at 34 px) and accuracy collapses (97% → 40%), so the seed's "larger is
  better" does not carry over to 32-pixel images. Sizes at or below the training size keep the
  1×1 map: the demo trains at 32 and predicts at 28, 30 and 32. The smaller sizes are weaker
  (45–92% at 28) but see the digit at another scale; the learned stage 2 decides what they add.
- Epochs: 14 (batch 32, 15 steps an epoch); 30 gain under a point per model, and time is
  better spent on more models; at 12 the fused result lost half a point.
- Augmentation: the digits profile (random resized crops 0.35–1, no flips) with brightness and
  contrast jitter only: the images are grey, so hue and saturation jitter cost time for nothing.
- Specialists: four, one per Table I backbone. Each is weaker than the fused ensemble, and
  coverage hard-votes the corrections of its specialists (ties go to the base), so a label
  changes only where most of them agree; with two or three, coverage undid more right answers
  of the ensemble than it fixed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LOSSES = ("ce", "taylor_ce", "bi_tempered")


@dataclass(frozen=True)
class ProducerJob:
    """One training run of the demo: a ``<backbone>-<loss>`` recipe, or a specialist."""

    backbone: str
    loss: str
    table: str  # which of the seed's tables it belongs to: "I" (all losses), "II" (one loss)
    epochs: int
    subset: tuple[str, ...] = ()

    @property
    def recipe(self) -> str:
        return f"{self.backbone}-{self.loss}"

    @property
    def name(self) -> str:
        """The prediction name before ``-s<size>`` (the producer's own naming)."""
        return f"cov-{self.recipe}" if self.subset else self.recipe


@dataclass(frozen=True)
class DemoConfig:
    """Every choice of one demo run; ``full`` and ``quick`` are the two shipped ones."""

    name: str
    backbones: tuple[str, ...]  # trained with every loss (Table I)
    single_loss: tuple[tuple[str, str], ...]  # (backbone, loss) pairs (Tables II–III)
    epochs: int
    test_sizes: tuple[int, ...]
    tta: tuple[str, ...]
    img_size: int = 32
    batch_size: int = 32  # 15 steps an epoch on 500 images: short runs need the steps
    losses: tuple[str, ...] = LOSSES
    # Specialists: the weakest classes of the base on val, at most ``max_weak`` of them, each a
    # class whose val accuracy is below ``weak_threshold``, and at least the ``min_weak`` worst
    # (``ee weak-classes --threshold 0.99 --max 3 --min 2``).
    weak_threshold: float = 0.99
    max_weak: int = 3
    min_weak: int = 2
    specialist_backbones: tuple[str, ...] = (
        "test_resnet",
        "test_efficientnet",
        "test_mambaout",
        "test_efficientnet_evos",
    )
    specialist_loss: str = "ce"
    specialist_epochs: int = 12
    subset_per_class: int = 150
    other_per_class: int = 20
    recipe_set: dict[str, Any] = field(
        default_factory=lambda: {"color_jitter": "0.4,0.4,0,0", "warmup_epochs": 2}
    )

    def producer_jobs(self) -> list[ProducerJob]:
        """Table I (every backbone × every loss), then Tables II–III (one loss each)."""
        jobs = [
            ProducerJob(b, loss, "I", self.epochs) for b in self.backbones for loss in self.losses
        ]
        jobs += [ProducerJob(b, loss, "II", self.epochs) for b, loss in self.single_loss]
        return jobs

    def specialist_jobs(self, weak: list[str]) -> list[ProducerJob]:
        return [
            ProducerJob(b, self.specialist_loss, "cov", self.specialist_epochs, tuple(weak))
            for b in self.specialist_backbones
        ]

    def overrides(self, job: ProducerJob, seed: int) -> dict[str, Any]:
        """The ``ee produce`` options of ``job`` (what ``recipe.yaml`` in its run folder shows)."""
        out: dict[str, Any] = {
            "epochs": job.epochs,
            "batch_size": self.batch_size,
            "seed": seed,
            "img_size": self.img_size,
            "workers": 0,
            "device": "cpu",
            # a specialist is judged at its training size only: the sizes' diversity is for the
            # stage-1 votes, and a weaker small-size specialist would only outvote a better one
            "test_sizes": [self.img_size] if job.subset else list(self.test_sizes),
            "tta": list(self.tta),
            "set": {"defaults": "digits", **self.recipe_set},
        }
        if job.subset:
            out["subset_per_class"] = self.subset_per_class
            out["other_per_class"] = self.other_per_class
        return out


FULL = DemoConfig(
    name="full",
    backbones=("test_resnet", "test_efficientnet", "test_mambaout", "test_efficientnet_evos"),
    single_loss=(("test_byobnet", "ce"), ("test_efficientnet_gn", "ce")),
    epochs=14,
    test_sizes=(28, 30, 32),
    tta=("identity", "rotate"),
)

QUICK = DemoConfig(
    name="quick",
    backbones=("test_resnet", "test_efficientnet"),
    single_loss=(("test_mambaout", "ce"),),
    epochs=4,
    test_sizes=(28, 30, 32),
    tta=("identity", "rotate"),
    specialist_backbones=("test_resnet",),
    specialist_epochs=4,
    subset_per_class=50,
    other_per_class=10,
)


def demo_config(quick: bool) -> DemoConfig:
    return QUICK if quick else FULL
