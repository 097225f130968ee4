"""What a recipe holds: the ``Recipe`` fields, the defaults profiles, and which values are valid.

Every field is typed; ``fields.coerce`` turns YAML values and ``--set`` text into those types,
then ``recipe_problems`` checks the constraints between values (ranges, orderings, pairs that
need each other). A ``Recipe`` that exists is therefore valid: the training loop, the run id and
the saved ``recipe.yaml`` never meet a value that would fail later, mid-run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, get_type_hints

from ensemble_engine import OTHER, RecipeError

from .backbones import min_input_size
from .fields import coerce, describe

PRODUCER_NAME = "timm"
REFERENCE_SIZE = 224
REFERENCE_TEST_SIZES = (224, 320, 380)  # the seed predicted at these sizes for 224-pixel training
SUBSET_PER_CLASS = 500  # a specialist's training images per listed class (resampled)
OTHER_PER_CLASS = 5  # a specialist's training images per other class, all labelled __other__
VFLIP_ON = 0.5  # probability that --vflip switches on
NOISE_ON = 1.0  # probability that --noise switches on: every image gets noise
NOISE_MODES = ("channel_shared", "per_channel")
INITS = ("xavier", "default")
SEED_LIMIT = 2**32  # numpy's global generator, seeded with the recipe's seed, takes 32 bits
# Distillation defaults (see ``distill`` and ``KD_SOURCES``).
KD_TEMPERATURE = 4.0
KD_ALPHA = 0.9


@dataclass(frozen=True)
class Recipe:
    """A resolved, validated training recipe. Defaults are the seed's ImageNet settings."""

    backbone: str  # a timm architecture name
    loss: str  # a registered loss name (aliases resolved)
    loss_params: dict[str, Any] = field(default_factory=dict)
    defaults: str = "imagenet"  # the defaults profile that filled the values no one gave
    epochs: int = 100
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    warmup_epochs: int = 5
    warmup_lr: float = 1e-5
    min_lr: float = 0.0
    img_size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    vflip: float = 0.5
    color_jitter: tuple[float, float, float, float] = (0.5, 0.5, 0.5, 0.1)
    noise: float = NOISE_ON  # probability of additive Gaussian noise
    # σ on the 0–255 scale, drawn per image from U(min, max); min = max is a fixed amplitude.
    # The seed's "Gaussian noise 0, 1, 20": N(0, 1) × 20, one field shared by R, G and B.
    noise_sigma: tuple[float, float] = (20.0, 20.0)
    noise_mode: str = "channel_shared"  # one noise field for all channels, or per_channel
    aa: str | None = "original"  # a timm augmentation policy string, or None
    # timm's Mixup (batch mode), with the alphas of DeiT / timm's ImageNet recipes.
    mixup: float = 0.8  # mixup alpha; 0 switches it off
    cutmix: float = 1.0  # cutmix alpha; 0 switches it off
    mixup_prob: float = 1.0  # probability that a batch is mixed at all (timm's default)
    mixup_switch_prob: float = 0.5  # probability of cutmix rather than mixup (timm's default)
    mixup_smoothing: float = 0.0  # label smoothing of the mixed targets; losses own smoothing
    init: str = "xavier"
    amp: bool = True  # mixed precision, used on CUDA only
    channels_last: bool = True  # used on CUDA only
    ema: bool = False
    ema_decay: float = 0.9998
    seed: int = 0
    device: str = "auto"
    workers: int = 4
    test_sizes: tuple[int, ...] = REFERENCE_TEST_SIZES
    # The seed's four test-phase views (section III-A); no identity view, as in the seed.
    tta: tuple[str, ...] = ("hflip", "color_jitter", "gauss_noise", "rotate")
    merge: str = "mean_logits"  # how the TTA views' outputs become one score row
    crop_pct: float = 0.875
    holdout: float = 0.0  # fraction of train held out for validation; 0 uses the val split
    # A specialist (class-subset) run: these class ids plus one __other__ class; see ``specialist``.
    subset: tuple[str, ...] = ()
    subset_per_class: int = SUBSET_PER_CLASS
    other_per_class: int = OTHER_PER_CLASS
    # Distillation (see ``distill``): a stored prediction whose soft targets on train join the
    # labels in the loss, at temperature kd_temperature with weight kd_alpha.
    teacher: str | None = None
    kd_temperature: float = KD_TEMPERATURE
    kd_alpha: float = KD_ALPHA
    # The splits predicted after training; empty: every split but those trained on.
    splits: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, coerce(f.name, getattr(self, f.name), HINTS[f.name]))
        for ok, problem in recipe_problems(self):
            if not ok:
                raise RecipeError(f"recipe {self.name}: {problem}")

    @property
    def name(self) -> str:
        return f"{self.backbone}-{self.loss}"

    @property
    def specialist(self) -> bool:
        """Whether this trains on a class subset plus ``__other__``."""
        return bool(self.subset)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-able values (tuples as lists), with ``producer`` for re-running.

        The subset fields appear only in a specialist's recipe, so every other recipe (its
        file, its hash, its run id) reads as it did before specialists existed; likewise the
        distillation fields only with a teacher, and ``splits`` only where given.
        """
        out = {"producer": PRODUCER_NAME}
        for key, value in asdict(self).items():
            if key in SUBSET_FIELDS and not self.subset:
                continue
            if (key in KD_FIELDS and not self.teacher) or (key == "splits" and not value):
                continue
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def training_hash(self) -> str:
        """A short hash of every value that changes the trained weights."""
        values = {k: v for k, v in self.to_dict().items() if k not in WEIGHT_NEUTRAL}
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]

    def run_id(self) -> str:
        prefix = "cov-" if self.subset else ""
        return f"{prefix}{self.name}-s{self.seed}-{self.training_hash()}"

    def replace(self, **changes: Any) -> Recipe:
        return replace(self, **changes)


HINTS: dict[str, Any] = get_type_hints(Recipe)
FIELD_NAMES = tuple(f.name for f in fields(Recipe))
NAME_FIELDS = ("backbone", "loss")
# Values that leave the trained weights unchanged: not hashed, free to change on resume.
# (``workers`` is one: every sample carries its own augmentation seed, see ``loaders``.)
WEIGHT_NEUTRAL = frozenset({"device", "workers", "test_sizes", "tta", "merge", "splits"})
SUBSET_FIELDS = ("subset", "subset_per_class", "other_per_class")
KD_FIELDS = ("teacher", "kd_temperature", "kd_alpha")
# Where the distillation defaults come from (shown by `ee recipes`).
KD_SOURCES = {
    "teacher": "none: a stored prediction on train (ee produce --teacher NAME)",
    "kd_temperature": "T = 4: the KD baseline of Tian et al. 2020 (CRD, RepDistiller kd_T)",
    "kd_alpha": "0.9 on the soft term, 0.1 on the labels: the same KD baseline (-a 0.9 -r 0.1); "
    "Hinton et al. 2015 found a much lower weight on the hard targets best",
}

PROFILES: dict[str, dict[str, Any]] = {
    "imagenet": {},  # the ``Recipe`` defaults: the seed's values (see ``SEED_SOURCES``)
    # The embedded digits are 32-pixel grey images of 10 classes, 50 per class: short training,
    # a gentler rate, no flips (a flipped 2 or 7 is no digit) and crops that keep most of it;
    # no mixup/cutmix (30 epochs on 500 images are too short for them to pay off, and a pasted
    # patch of another digit can erase the stroke that tells 1 from 7) and no noise.
    "digits": {
        "epochs": 30,
        "batch_size": 64,
        "lr": 0.05,
        "warmup_epochs": 3,
        "img_size": 32,
        "scale": (0.35, 1.0),
        "hflip": 0.0,
        "vflip": 0.0,
        "noise": 0.0,
        "aa": None,
        "mixup": 0.0,
        "cutmix": 0.0,
        "workers": 2,
        "tta": ("identity",),  # no flips in training, so none at test time either
    },
}
# Where each value of the imagenet profile comes from: the seed report's section, or our choice.
SEED_SOURCES = {
    "epochs": "our choice (the seed gives none)",
    "batch_size": "our choice (the seed gives none)",
    "lr": "seed III-B: SGD, lr 0.1",
    "momentum": "seed III-B",
    "weight_decay": "seed III-B",
    "warmup_epochs": "seed III-B: linear warm-up over 5 epochs, then cosine",
    "img_size": "seed III-A.1",
    "scale": "seed III-A.1",
    "ratio": "seed III-A.1",
    "hflip": "seed III-A.2",
    "vflip": "seed III-A.2",
    "color_jitter": "seed III-A.3: [0.5, 1.5] ×3, hue [-0.1, 0.1]",
    "noise": "seed III-A.4: every image",
    "noise_sigma": "seed III-A.4: 'Gaussian noise 0, 1, 20' = N(0, 1) × 20 (0–255 scale)",
    "noise_mode": "seed III-A.4 as in the AddGaussianNoise it names: one field for R, G, B",
    "aa": "seed II-C.1: AutoAugment's original policy",
    "mixup": "seed II-C.2 (on); alpha 0.8 from DeiT / timm's ImageNet recipes",
    "cutmix": "seed II-C.3 (on); alpha 1.0 from DeiT / timm's ImageNet recipes",
    "mixup_prob": "timm's default (every batch mixed)",
    "mixup_switch_prob": "timm's default (cutmix or mixup, even odds)",
    "mixup_smoothing": "our choice: 0, label smoothing is a loss of its own (seed II-B.1, ls)",
    "init": "seed III-B: Xavier",
    "amp": "seed III-B: mixed precision",
    "test_sizes": "seed III-C: 224, 320, 380",
    "tta": "seed III-A: flip, colour jitter, Gaussian noise, rotation",
    "merge": "our choice: mean of the views' logits",
}
PROFILE_VALUES = ("epochs", "img_size", "lr", "warmup_epochs", "batch_size", "hflip", "vflip",
                  "aa", "noise", "noise_sigma", "noise_mode", "mixup", "cutmix", "mixup_prob",
                  "mixup_switch_prob", "mixup_smoothing", "tta")  # fmt: skip


def profile_values(profile: str) -> dict[str, Any]:
    """The values a defaults profile gives (``Recipe`` defaults, then the profile's own)."""
    defaults = {f.name: f.default for f in fields(Recipe) if f.name in PROFILE_VALUES}
    merged = {**defaults, **{k: v for k, v in PROFILES[profile].items() if k in PROFILE_VALUES}}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in merged.items()}


def _note(profile: str) -> str:
    v = profile_values(profile)

    def pair(x: list[float]) -> str:
        return f"{x[0]:g}" if x[0] == x[1] else f"{x[0]:g}–{x[1]:g}"

    noise = f"noise σ {pair(v['noise_sigma'])} {v['noise_mode']}" if v["noise"] else "no noise"
    mix = (
        f"mixup {v['mixup']:g}/cutmix {v['cutmix']:g} (switch {v['mixup_switch_prob']:g}, "
        f"smoothing {v['mixup_smoothing']:g})"
        if v["mixup"] or v["cutmix"]
        else "no mixup/cutmix"
    )
    flips = "flips h/v" if v["hflip"] or v["vflip"] else "no flips"
    aa = f"AutoAugment {v['aa']}" if v["aa"] else "no AutoAugment"
    return (
        f"{v['img_size']} px, lr {v['lr']:g}, {v['warmup_epochs']} warm-up epochs, "
        f"{v['epochs']} epochs, batch {v['batch_size']}, {flips}, {aa}, {noise}, {mix}, "
        f"tta {','.join(v['tta'])}"
    )


PROFILE_NOTES = {
    "imagenet": f"the seed's ImageNet recipe: {_note('imagenet')}",
    "digits": f"sized for small images (the embedded digits): {_note('digits')}",
}


def recipe_problems(r: Recipe) -> list[tuple[bool, str]]:
    """(condition, what is wrong and how to fix it) for every constraint between values.

    Types are already right (``coerce`` ran first) and every number is finite (``fields``
    refuses NaN and infinities), so each condition reads as the range it states.
    """
    low = min_input_size(r.backbone)
    sizes = (r.img_size, *r.test_sizes)
    return [
        (r.defaults in PROFILES, f"defaults must be one of {', '.join(PROFILES)}"),
        (r.epochs >= 1, "epochs must be >= 1"),
        (r.batch_size >= 1, "batch_size must be >= 1"),
        (r.lr > 0 and r.warmup_lr >= 0 and r.min_lr >= 0, "lr must be > 0, warmup_lr/min_lr >= 0"),
        (r.min_lr <= r.lr, "min_lr must not exceed lr"),
        (0 <= r.momentum < 1 and r.weight_decay >= 0, "momentum in [0, 1), weight_decay >= 0"),
        (r.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
        (all(s >= 8 for s in sizes), "img_size and test_sizes must be >= 8 pixels"),
        (low is None or min(sizes) >= low, f"{r.backbone} needs images of >= {low} pixels"),
        (
            len(set(r.test_sizes)) == len(r.test_sizes),
            "test_sizes lists a size twice (each size is one prediction); list each once",
        ),
        (0 < r.scale[0] <= r.scale[1] <= 1, "scale must be 0 < min <= max <= 1, e.g. 0.08,1"),
        (0 < r.ratio[0] <= r.ratio[1], "ratio must be 0 < min <= max, e.g. 0.75,1.3333"),
        (all(0 <= p <= 1 for p in (r.hflip, r.vflip, r.noise)), "hflip, vflip, noise: p in [0, 1]"),
        (min(r.color_jitter) >= 0 and r.color_jitter[3] <= 0.5, "color_jitter >= 0, hue <= 0.5"),
        (0 <= r.noise_sigma[0] <= r.noise_sigma[1], "noise_sigma must be 0 <= min <= max"),
        (r.noise_mode in NOISE_MODES, f"noise_mode must be one of {', '.join(NOISE_MODES)}"),
        (r.mixup >= 0 and r.cutmix >= 0, "mixup and cutmix alphas must be >= 0 (0 = off)"),
        (
            0 <= r.mixup_prob <= 1 and 0 <= r.mixup_switch_prob <= 1,
            "mixup_prob and mixup_switch_prob must lie in [0, 1]",
        ),
        (0 <= r.mixup_smoothing < 1, "mixup_smoothing must lie in [0, 1), e.g. 0.1"),
        (
            r.batch_size % 2 == 0 or not (r.mixup or r.cutmix),
            "mixup/cutmix need an even batch_size",
        ),
        (r.init in INITS, f"init must be one of {', '.join(INITS)}"),
        (0 < r.ema_decay < 1, "ema_decay must lie in (0, 1)"),
        (0 <= r.seed < SEED_LIMIT, f"seed must lie in 0..{SEED_LIMIT - 1} (numpy takes 32 bits)"),
        (r.workers >= 0, "workers must be >= 0"),
        (_valid_device(r.device), "device must be auto, cpu, cuda or cuda:N"),
        (len(r.test_sizes) > 0 and len(r.tta) > 0, "test_sizes and tta need at least one value"),
        (0 < r.crop_pct <= 1, "crop_pct must lie in (0, 1]"),
        (0 <= r.holdout < 1, "holdout must lie in [0, 1), e.g. 0.1"),
        (len(set(r.subset)) == len(r.subset), "subset lists a class twice; list each once"),
        (OTHER not in r.subset, f"subset must not list {OTHER}: it is added by itself"),
        (r.subset_per_class >= 1, "subset_per_class must be >= 1"),
        (r.other_per_class >= 1, f"other_per_class must be >= 1 (the {OTHER} class needs images)"),
        (
            bool(r.subset)
            or (r.subset_per_class, r.other_per_class) == (SUBSET_PER_CLASS, OTHER_PER_CLASS),
            "subset_per_class and other_per_class need a subset (ee produce --subset FILE)",
        ),
        (r.kd_temperature > 0, "kd_temperature must be > 0, e.g. 4"),
        (0 <= r.kd_alpha <= 1, "kd_alpha must lie in [0, 1], e.g. 0.9"),
        (
            bool(r.teacher) or (r.kd_temperature, r.kd_alpha) == (KD_TEMPERATURE, KD_ALPHA),
            "kd_temperature and kd_alpha need a teacher (ee produce --teacher NAME)",
        ),
        (
            not (r.teacher and r.subset),
            "a specialist (subset) cannot distil from a teacher; drop --teacher or --subset",
        ),
        (len(set(r.splits)) == len(r.splits), "splits lists a split twice; list each once"),
    ]


def _valid_device(device: str) -> bool:
    head, _, index = device.partition(":")
    return device in ("auto", "cpu", "cuda") or (
        head == "cuda" and index.isascii() and index.isdigit()
    )


def describe_fields() -> dict[str, str]:
    """Field name → the accepted value form, for help texts and error messages."""
    return {name: describe(HINTS[name]) for name in FIELD_NAMES}
