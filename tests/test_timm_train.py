"""The timm producer's training half: recipes, transforms, optimiser, schedule, runs, resume."""

from __future__ import annotations

import copy
import csv
import json
import math

import numpy as np
import pytest
import torch
import yaml
from ee_timm.backbones import BACKBONE_ALIASES, timm_model_names
from ee_timm.builders import (
    build_model,
    build_optimizer,
    build_scheduler,
    has_fused_kernels,
    load_optimizer_state,
)
from ee_timm.checkpoint import SUMMARY_COLUMNS, load_checkpoint
from ee_timm.loaders import train_loader
from ee_timm.producer import TimmProducer, training_samples
from ee_timm.recipe import Recipe, resolve_recipe
from ee_timm.train import DivergedError, train
from ee_timm.transforms import GaussianNoise, batch_mixer, eval_transform, train_transform
from helpers import numpy_dsb_weights, small_digits
from PIL import Image
from rich.console import Console

from ensemble_engine.errors import RecipeError
from ensemble_engine.losses import create_loss
from ensemble_engine.producer import ProduceRequest

QUIET = Console(quiet=True)
# Three short epochs with every random part switched on (crops, flips, AutoAugment, noise,
# mixup and cutmix, EMA), so that resuming must restore torch's, numpy's and Python's random
# states.
FAST = {
    "epochs": 3, "workers": 0, "batch_size": 8, "mixup": 0.2, "cutmix": 1.0, "aa": "original",
    "noise": True,
    "vflip": True, "ema": True, "set": {"warmup_epochs": "1", "ema_decay": "0.9"},
}  # fmt: skip


def digits(**overrides) -> Recipe:
    return resolve_recipe("resnet10t-ce", overrides, defaults="digits")


# --- recipe names -----------------------------------------------------------------------------


@pytest.mark.parametrize("alias", sorted(BACKBONE_ALIASES))
def test_seed_aliases_name_timm_models(alias):
    recipe = resolve_recipe(f"{alias}-ce", defaults="digits")
    assert recipe.backbone == BACKBONE_ALIASES[alias]
    assert recipe.backbone in timm_model_names()


def test_timm_names_never_contain_a_dash():
    # The recipe name is split at its first "-"; that is only safe while this holds.
    assert not [name for name in timm_model_names() if "-" in name]


@pytest.mark.parametrize(
    ("spec", "backbone", "loss"),
    [
        ("resnet10t-taylor", "resnet10t", "taylor_ce"),
        ("ResNeSt101-ls", "resnest101e", "label_smoothing"),
        ("tresnetxl-bitempered", "tresnet_xl", "bi_tempered"),
        ("regnetx_120-focal", "regnetx_120", "focal"),
    ],
)
def test_recipe_names_resolve_aliases(spec, backbone, loss):
    recipe = resolve_recipe(spec)
    assert (recipe.backbone, recipe.loss) == (backbone, loss)
    assert recipe.name == f"{backbone}-{loss}"


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("resnet181-ce", "resnet18"),  # close timm name
        ("resnest10-ce", "resnest101"),  # close seed alias
        ("resnet18-tayler", "taylor"),  # close loss
        ("resnet18", "<backbone>-<loss>"),
        ("-ce", "<backbone>-<loss>"),
    ],
)
def test_unknown_names_say_what_is_close(spec, needle):
    with pytest.raises(RecipeError, match=needle.replace("<", ".").replace(">", ".")):
        resolve_recipe(spec)


def test_defaults_profiles_and_derived_test_sizes():
    imagenet = resolve_recipe("resnet18-ce")
    assert (imagenet.defaults, imagenet.img_size, imagenet.lr, imagenet.warmup_epochs) == (
        "imagenet", 224, 0.1, 5,
    )  # fmt: skip
    assert imagenet.test_sizes == (224, 320, 380)
    assert (imagenet.momentum, imagenet.nesterov, imagenet.weight_decay) == (0.9, False, 1e-4)
    assert (imagenet.hflip, imagenet.vflip, imagenet.aa) == (0.5, 0.5, "original")
    small = digits()
    assert (small.defaults, small.img_size, small.epochs, small.batch_size) == (
        "digits",
        32,
        30,
        64,
    )
    # Same ratios to the training size as 224 → 320, 380: 32·320/224 = 45.7, 32·380/224 = 54.3.
    assert small.test_sizes == (32, 46, 54)
    # 64·320/224 = 91.4, 64·380/224 = 108.6.
    assert digits(img_size=64).test_sizes == (64, 91, 109)
    assert digits(img_size=64, test_sizes=[64]).test_sizes == (64,)
    chosen = resolve_recipe("resnet18-ce", {"set": {"defaults": "digits"}})
    assert (chosen.defaults, chosen.img_size) == ("digits", 32)


def test_overrides_switches_and_set_pairs():
    r = resolve_recipe(
        "resnet18-ls",
        {
            "vflip": True, "noise": False, "aa": None, "ema": True, "tta": ["identity", "hflip"],
            "loss_params": {"smoothing": 0.2},
            "set": {"scale": "0.35,1", "hflip": "0", "color_jitter": "0.4,0.4,0.4,0",
                    "ema_decay": "0.99", "lr": "1e-3", "amp": "off"},
        },
        defaults="digits",
    )  # fmt: skip
    assert (r.vflip, r.noise, r.aa, r.ema, r.ema_decay) == (0.5, 0.0, None, True, 0.99)
    assert (r.scale, r.hflip, r.color_jitter) == ((0.35, 1.0), 0.0, (0.4, 0.4, 0.4, 0.0))
    assert (r.lr, r.amp, r.tta, r.loss_params) == (
        1e-3,
        False,
        ("identity", "hflip"),
        {"smoothing": 0.2},
    )


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"colour": 1}, "unknown override 'colour'"),
        ({"set": {"colour": "1"}}, "--set colour"),
        ({"set": {"backbone": "resnet50"}}, "--set backbone"),
        ({"set": {"lr": "fast"}}, "lr takes a number"),
        ({"set": {"scale": "0.5"}}, "scale takes 2 comma-separated"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"set": {"scale": "0.9,0.5"}}, "scale must be"),
        ({"mixup": 0.2, "batch_size": 15}, "even batch_size"),
        ({"device": "tpu"}, "device must be"),
        ({"aa": "bogus"}, "not a timm augmentation policy"),
        ({"loss_params": {"nope": 1}}, "does not accept parameters"),
        ({"holdout": 1.5}, "holdout must lie"),
    ],
)
def test_bad_overrides_name_the_problem(overrides, needle):
    with pytest.raises(RecipeError, match=needle):
        digits(**overrides)


def test_backbone_minimum_size_is_checked():
    with pytest.raises(RecipeError, match="needs images of >= 75"):
        resolve_recipe("inceptionresnetv2-ce", {"img_size": 64}, defaults="digits")
    assert resolve_recipe("inceptionresnetv2-ce", {"img_size": 80}).img_size == 80
    # The digits default of 32 pixels is raised to the backbone's minimum; 75·320/224 = 107.1,
    # 75·380/224 = 127.2.
    small = resolve_recipe("inceptionresnetv2-ce", defaults="digits")
    assert (small.img_size, small.test_sizes) == (75, (75, 107, 127))


def test_yaml_recipe_files(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "backbone: resnest101\nloss: ls\ndefaults: digits\nepochs: 5\nscale: [0.5, 1]\n"
    )
    r = resolve_recipe(path, {"epochs": 7})
    assert (r.backbone, r.loss, r.defaults, r.epochs, r.scale) == (
        "resnest101e", "label_smoothing", "digits", 7, (0.5, 1.0),
    )  # fmt: skip
    saved = tmp_path / "saved.yml"
    saved.write_text(yaml.safe_dump(r.to_dict()))
    assert resolve_recipe(saved) == r  # a saved recipe re-runs as it was
    for text, needle in [
        ("backbone: resnet18\nloss: ce\ncolour: 1\n", "unknown field"),
        ("producer: other\nbackbone: resnet18\nloss: ce\n", "producer 'other'"),
        ("loss: ce\n", "needs backbone"),
        ("- a list\n", "mapping"),
        ("backbone: [unclosed\n", "not valid YAML"),
    ]:
        path.write_text(text)
        with pytest.raises(RecipeError, match=needle):
            resolve_recipe(path)


def test_run_id_hashes_what_changes_the_weights():
    base = digits()
    assert base.run_id() == digits().run_id()
    assert base.run_id().startswith("resnet10t-ce-s0-")
    assert digits(lr=0.01).run_id() != base.run_id()
    assert digits(seed=3).run_id().startswith("resnet10t-ce-s3-")
    assert digits(device="cpu", workers=1, tta=["hflip"], test_sizes=[40]).run_id() == base.run_id()


# --- transforms, model, optimiser, schedule ---------------------------------------------------


def test_train_and_eval_transforms_shapes_and_ranges():
    image = Image.new("RGB", (32, 32), (200, 30, 90))
    mean, std = torch.tensor((0.485, 0.456, 0.406)), torch.tensor((0.229, 0.224, 0.225))
    low, high = (-mean / std)[:, None, None], ((1 - mean) / std)[:, None, None]
    seed_recipe = resolve_recipe("resnet10t-ce", {"img_size": 40})  # flips, AA, noise all on
    names = [type(t).__name__ for t in train_transform(seed_recipe).transforms]
    assert names == [
        "RandomResizedCrop", "RandomHorizontalFlip", "RandomVerticalFlip", "ColorJitter",
        "AutoAugment", "ToTensor", "GaussianNoise", "Normalize",
    ]  # fmt: skip
    torch.manual_seed(0)
    for recipe in (seed_recipe, digits()):
        x = train_transform(recipe)(image)
        assert x.shape == (3, recipe.img_size, recipe.img_size) and x.dtype == torch.float32
        assert (x >= low - 1e-5).all() and (x <= high + 1e-5).all()
    y = eval_transform(46, 0.875)(image)
    assert y.shape == (3, 46, 46)
    # A flat image stays flat through resize + centre crop: every pixel is the colour itself.
    expected = (torch.tensor((200, 30, 90)) / 255 - mean) / std
    torch.testing.assert_close(y, expected[:, None, None].expand(3, 46, 46), atol=1e-5, rtol=0)


def test_gaussian_noise_strength_and_clipping():
    torch.manual_seed(0)
    flat = torch.full((3, 64, 64), 0.5)
    noisy = GaussianNoise(p=1.0, sigma=(10.0, 10.0))(flat)
    assert abs((noisy - flat).std().item() - 10 / 255) < 0.003
    assert torch.equal(GaussianNoise(p=0.0)(flat), flat)
    bright = GaussianNoise(p=1.0, sigma=(20.0, 20.0))(torch.ones(3, 16, 16))
    assert bright.max() <= 1.0 and bright.min() < 1.0


def test_mixup_gives_soft_targets_without_smoothing():
    mixer = batch_mixer(digits(mixup=0.4), 10)
    assert batch_mixer(digits(), 10) is None
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    _, soft = mixer(x, y)
    lam = soft[0, 0].item()  # row 0 is lam·onehot(0) + (1 - lam)·onehot(3) (batch flipped)
    expected = lam * torch.eye(10)[y] + (1 - lam) * torch.eye(10)[y.flip(0)]
    torch.testing.assert_close(soft, expected)


def test_imagenet_profile_is_the_seeds_and_digits_keep_theirs():
    seed = resolve_recipe("resnet18-ce")
    assert (seed.mixup, seed.cutmix) == (0.8, 1.0)  # DeiT / timm ImageNet alphas
    assert (seed.mixup_prob, seed.mixup_switch_prob, seed.mixup_smoothing) == (1.0, 0.5, 0.0)
    assert seed.tta == ("hflip", "color_jitter", "gauss_noise", "rotate")  # seed III-A, 4 views
    assert (seed.noise, seed.noise_sigma, seed.noise_mode) == (1.0, (20.0, 20.0), "channel_shared")
    small = digits()
    assert (small.mixup, small.cutmix, small.noise, small.tta) == (0.0, 0.0, 0.0, ("identity",))
    assert batch_mixer(small, 10) is None
    mixer = batch_mixer(seed, 1000)  # timm's Mixup with the recipe's values
    assert (mixer.mixup_alpha, mixer.cutmix_alpha, mixer.mix_prob, mixer.switch_prob) == (
        0.8, 1.0, 1.0, 0.5,
    )  # fmt: skip
    assert (mixer.label_smoothing, mixer.mode, mixer.num_classes) == (0.0, "batch", 1000)
    steps = {type(t).__name__: t for t in train_transform(seed).transforms}
    noise = steps["GaussianNoise"]
    assert (noise.p, noise.sigma, noise.mode) == (1.0, (20.0, 20.0), "channel_shared")
    with pytest.raises(RecipeError, match="noise_mode must be one of"):
        digits(set={"noise_mode": "grey"})
    with pytest.raises(RecipeError, match="mixup_prob and mixup_switch_prob"):
        digits(set={"mixup_switch_prob": "1.5"})


def test_seed_noise_is_one_grey_field_of_sigma_20_per_image():
    # AddGaussianNoise(mean=0, variance=1, amplitude=20): 20 * N(0, 1) on the 0-255 scale, one
    # field for R, G and B. Mid-grey pixels stay far from the clamp (20/255 = 0.078 per sigma).
    torch.manual_seed(0)
    flat = torch.full((3, 96, 96), 0.5)
    stds = []
    for _ in range(4):
        diff = GaussianNoise()(flat) - flat
        assert torch.equal(diff[0], diff[1]) and torch.equal(diff[1], diff[2])
        assert abs(diff.mean().item()) < 0.004
        stds.append(diff[0].std().item())
    np_stds = torch.tensor(stds)
    assert torch.allclose(np_stds, torch.full((4,), 20 / 255), rtol=0.03)  # fixed, not drawn
    # per_channel with a σ range: channels differ; each image its own σ in [1, 20]
    per = [GaussianNoise(sigma=(1.0, 20.0), mode="per_channel")(flat) - flat for _ in range(8)]
    assert not torch.equal(per[0][0], per[0][1])
    spread = torch.tensor([d.std().item() * 255 for d in per])
    assert spread.min() > 0.9 and spread.max() < 20.5 and spread.max() - spread.min() > 2


def test_xavier_init_of_convs_and_linears():
    xavier = build_model(digits(), 10)
    default = build_model(digits(init="default"), 10)

    def within_bound(model):
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
                fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(m.weight)
                if m.weight.abs().max() > math.sqrt(6 / (fan_in + fan_out)):
                    return False
                if m.bias is not None and m.bias.abs().max() > 0:
                    return False
        return True

    assert within_bound(xavier)
    assert not within_bound(default)  # timm's own init (Kaiming normal) exceeds the bound


def test_optimizer_is_classical_momentum_sgd():
    opt = build_optimizer(digits(), build_model(digits(), 10))
    assert type(opt) is torch.optim.SGD
    assert {(g["momentum"], g["nesterov"]) for g in opt.param_groups} == {(0.9, False)}
    # timm keeps weight decay off biases and norm layers, as its train.py does.
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 1e-4]


def test_optimizer_uses_the_fused_kernel_with_the_same_update_as_the_loop():
    # Independently: torch's plain SGD (a Python loop over the parameters) on the same groups.
    recipe = digits()
    model = build_model(recipe, 10)
    fused = build_optimizer(recipe, model)
    assert {g["fused"] for g in fused.param_groups} == {True}  # torch has CPU fused kernels
    twin = copy.deepcopy(model)
    groups = [
        {**{k: v for k, v in g.items() if k != "params"}, "fused": None, "foreach": False,
         "params": [dict(twin.named_parameters())[n] for n in names]}
        for g, names in zip(fused.param_groups, param_names(model, fused), strict=True)
    ]  # fmt: skip
    loop = torch.optim.SGD(groups)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 10
    for net, opt in ((model, fused), (twin, loop)):
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), name
    assert not has_fused_kernels(torch.nn.Linear(2, 2).to("meta"))


def test_a_run_saved_without_the_fused_step_resumes_with_it_under_a_grad_scaler(monkeypatch):
    import ee_timm.builders as builders

    recipe = digits()
    model = build_model(recipe, 10)
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)

    def one_step(opt, scaler=None):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=scaler is not None):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    with monkeypatch.context() as m:  # as a run of an ee before the fused step saved it
        m.setattr(builders, "has_fused_kernels", lambda model: False)
        unfused = build_optimizer(recipe, model)
    one_step(unfused)
    saved = copy.deepcopy(unfused.state_dict())

    plain = build_optimizer(recipe, model)
    plain.load_state_dict(saved)  # torch's own load takes the checkpoint's fused=None
    with pytest.raises(AssertionError, match="grad_scale"):
        one_step(plain, torch.amp.GradScaler("cpu"))

    resumed = build_optimizer(recipe, model)
    load_optimizer_state(resumed, saved)
    assert {g["fused"] for g in resumed.param_groups} == {True}
    in_order = [p for g in resumed.param_groups for p in g["params"]]  # state_dict's numbering
    for i, p in enumerate(in_order):
        kept = saved["state"][i]["momentum_buffer"]
        assert torch.equal(resumed.state[p]["momentum_buffer"], kept)
    one_step(resumed, torch.amp.GradScaler("cpu"))  # steps: the scaler's flag goes to the kernel


def param_names(model, optimizer):
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [[by_id[id(p)] for p in g["params"]] for g in optimizer.param_groups]


def test_schedule_is_linear_warmup_then_cosine():
    recipe = digits(epochs=10, lr=0.1, set={"warmup_epochs": "3", "warmup_lr": "1e-5"})
    opt = build_optimizer(recipe, build_model(recipe, 10))
    scheduler = build_scheduler(recipe, opt)
    # Hand-computed: warm-up lr(e) = 1e-5 + e·(0.1 − 1e-5)/3 for e < 3; afterwards timm's cosine
    # over all 10 epochs, lr(e) = 0.05·(1 + cos(π·e/10)): e=3 → 0.05·1.587785, e=5 → 0.05,
    # e=9 → 0.05·(1 − 0.951057).
    expected = {0: 1e-5, 1: 0.03334, 2: 0.06667, 3: 0.0793893, 5: 0.05, 9: 0.00244717}
    for epoch, lr in expected.items():
        scheduler.step(epoch)
        assert opt.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-4)


# --- training runs ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_digits(tmp_path_factory):
    """4 train and 2 val images per class; the test split cut to 10 images (it is predicted)."""
    from ee_data import ImageFolderSource

    root = tmp_path_factory.mktemp("tiny") / "digits"
    small_digits(root, train_per_class=4, val_per_class=2, test_images=10)
    return ImageFolderSource(root)


@pytest.fixture(scope="module")
def finished_run(tiny_digits, tmp_path_factory):
    recipe = resolve_recipe("resnet10t-taylor", FAST, defaults="digits")
    train_s, val_s = training_samples(tiny_digits, recipe)
    run_dir = tmp_path_factory.mktemp("runs") / recipe.run_id()
    result = train(recipe, train_s, val_s, tiny_digits.classes, run_dir, console=QUIET)
    return recipe, result


def test_augmented_batches_do_not_depend_on_workers(tiny_digits):
    recipe = digits(**FAST)
    samples = tiny_digits.samples("train")

    def two_epochs(workers):
        generator = torch.Generator().manual_seed(7)
        loader = train_loader(samples, train_transform(recipe), batch_size=8, workers=workers,
                              generator=generator)  # fmt: skip
        return [batch for _ in range(2) for batch in loader]

    torch.manual_seed(0)
    in_process = two_epochs(0)
    assert torch.rand(()) == torch.rand((), generator=torch.Generator().manual_seed(0))
    in_workers = two_epochs(2)
    assert len(in_process) == len(in_workers) == 2 * (len(samples) // 8)
    for (x0, y0), (x1, y1) in zip(in_process, in_workers, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    assert not torch.equal(in_process[0][0], in_process[len(in_process) // 2][0])


def test_run_folder_contents(finished_run, tiny_digits):
    recipe, result = finished_run
    run = result.run_dir
    assert sorted(p.name for p in run.iterdir()) == [
        "best.pth", "last.pth", "recipe.yaml", "summary.csv",
    ]  # fmt: skip
    assert resolve_recipe(run / "recipe.yaml") == recipe
    with (run / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == SUMMARY_COLUMNS
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert all(0 <= float(r["val_top1"]) <= float(r["val_top5"]) <= 100 for r in rows)
    assert all(math.isfinite(float(r["train_loss"])) for r in rows)
    best = load_checkpoint(run / "best.pth")  # weights_only=True inside
    top1 = [float(r["val_top1"]) for r in rows]
    assert best["val_top1"] == pytest.approx(max(top1), abs=1e-4)
    assert best["epoch"] == top1.index(max(top1)) + 1 == result.best_epoch
    assert best["classes"] == tiny_digits.classes
    build_model(recipe, 10).load_state_dict(best["model"])
    last = torch.load(run / "last.pth", weights_only=True)
    assert last["epoch"] == 3 and len(last["history"]) == 3


class Interrupted(Exception):
    pass


def train_until_epoch_2(recipe, train_s, val_s, classes, run_dir) -> None:
    """A run stopped after its second epoch, as a kill after that epoch's checkpoint would."""

    def stop_after_two(row):
        if row["epoch"] == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(recipe, train_s, val_s, classes, run_dir, console=QUIET, on_epoch_end=stop_after_two)


def test_resume_ends_with_the_same_weights(finished_run, tiny_digits, tmp_path):
    recipe, uninterrupted = finished_run
    train_s, val_s = training_samples(tiny_digits, recipe)

    run_dir = tmp_path / "run"
    train_until_epoch_2(recipe, train_s, val_s, tiny_digits.classes, run_dir)
    assert load_checkpoint(run_dir / "last.pth")["epoch"] == 2
    with pytest.raises(RecipeError, match="--resume"):
        train(recipe, train_s, val_s, tiny_digits.classes, run_dir, console=QUIET)
    with pytest.raises(RecipeError, match="other values of lr"):
        train(recipe.replace(lr=0.01), train_s, val_s, tiny_digits.classes, run_dir,
              resume=True, console=QUIET)  # fmt: skip
    resumed = train(recipe, train_s, val_s, tiny_digits.classes, run_dir, resume=True,
                    console=QUIET)  # fmt: skip
    for part in ("model", "ema"):
        a = load_checkpoint(uninterrupted.last_path)[part]
        b = load_checkpoint(resumed.last_path)[part]
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [[r["train_loss"] for r in res.history] for res in (uninterrupted, resumed)]
    assert losses[0] == losses[1]


# --- a loss that pools features (dsb_focal) ------------------------------------------------


def test_with_features_is_one_forward_of_the_model(monkeypatch):
    from ee_timm.builders import WithFeatures

    torch.manual_seed(0)
    model = build_model(digits(), 10).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        calls = []
        real = model.forward_features
        monkeypatch.setattr(model, "forward_features", lambda t: calls.append(1) or real(t))
        logits, features = WithFeatures(model)(x)
    assert calls == [1]  # one forward for both
    assert torch.equal(logits, expected) and torch.equal(features, pre)
    assert features.shape == (4, model.num_features)
    # under autocast (AMP) the features come in low precision; the pools keep float32
    loss = create_loss("dsb_focal", update_every=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, features = WithFeatures(model)(x)
        value = loss(logits, torch.tensor([0, 0, 1, 1]))
    assert features.dtype == torch.bfloat16 and value.dtype == torch.float32
    loss.update_features(features, torch.tensor([0, 0, 1, 1]))
    assert loss.feature_pool.dtype == torch.float32 and loss.pool_count.tolist()[:3] == [2, 2, 0]
    assert torch.isfinite(loss.class_weights).all()


@pytest.mark.parametrize(
    "backbone", ["test_efficientnet", "test_vit", "mobilenetv3_small_050", "regnetx_002"]
)
def test_with_features_logits_are_the_models_for_other_heads(backbone):
    from ee_timm.builders import WithFeatures

    torch.manual_seed(0)
    model = build_model(resolve_recipe(f"{backbone}-ce", defaults="digits"), 10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, features = WithFeatures(model)(x)
        torch.testing.assert_close(logits, model(x), rtol=0, atol=1e-6)
    # the classifier's input: timm's head_hidden_size (mobilenetv3: 1024 after its conv head)
    assert features.shape == (2, model.head_hidden_size) == (2, model.get_classifier().in_features)


def test_dsb_focal_run_ends_with_the_weights_of_its_pools(run_cli, tiny_digits, tmp_path):
    result = run_cli(
        "produce", "resnet10t-dsb_focal", "--data", tiny_digits.root, "--store",
        tmp_path / "s.zarr", "--runs-dir", tmp_path / "runs", "--run-id", "r",
        "--set", "defaults=digits", "--img-size", "16", "--epochs", "2", "--batch-size", "8",
        "--workers", "0", "--test-sizes", "16",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    last = load_checkpoint(tmp_path / "runs" / "r" / "last.pth")["loss"]
    # 4 images a class, 5 steps an epoch: every step fed its features (8 a class, 10 calls)
    assert last["pool_count"].tolist() == [8] * 10 and last["_extra_state"] == {"calls": 10}
    pool, count = last["feature_pool"].numpy(), last["pool_count"].numpy()
    np.testing.assert_allclose(np.linalg.norm(pool[:, :8], axis=2), 1.0, rtol=1e-5)  # unit rows
    assert not pool[:, 8:].any()  # the rest of each pool of 64 is still empty
    weights = last["class_weights"].numpy()
    assert weights.max() - weights.min() > 1e-3  # not uniform: the loss re-weighted
    np.testing.assert_allclose(weights, numpy_dsb_weights(pool, count), rtol=1e-5)
    best = load_checkpoint(tmp_path / "runs" / "r" / "best.pth")["loss"]
    assert set(best) == {"class_weights", "scales"}  # best.pth: no pools


def test_dsb_focal_resume_ends_where_an_uninterrupted_run_ends(tiny_digits, tmp_path):
    # Pools of 4 that wrap and a refresh every 3 steps (5 steps an epoch), mixup and cutmix on:
    # the resumed run must restore the pools, their ring positions and the update count.
    fast = {**FAST, "loss_params": {"pool_size": 4, "update_every": 3}}
    recipe = resolve_recipe("resnet10t-dsb_focal", fast, defaults="digits")
    train_s, val_s = training_samples(tiny_digits, recipe)
    whole = train(recipe, train_s, val_s, tiny_digits.classes, tmp_path / "whole", console=QUIET)

    run_dir = tmp_path / "run"
    train_until_epoch_2(recipe, train_s, val_s, tiny_digits.classes, run_dir)
    resumed = train(recipe, train_s, val_s, tiny_digits.classes, run_dir, resume=True,
                    console=QUIET)  # fmt: skip
    a, b = load_checkpoint(whole.last_path), load_checkpoint(resumed.last_path)
    assert a["loss"]["_extra_state"] == b["loss"]["_extra_state"] == {"calls": 15}
    assert not torch.equal(a["loss"]["class_weights"], torch.ones(10))
    for part in ("model", "ema", "loss"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            if isinstance(a[part][key], torch.Tensor):
                assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert [r["train_loss"] for r in whole.history] == [r["train_loss"] for r in resumed.history]


def test_mixing_a_run_smaller_than_one_odd_batch(tiny_digits, tmp_path):
    # The imagenet profile mixes every batch, and timm's Mixup takes pairs: 7 train images in
    # batches of 64 are one batch of 7, trained as 6 (else: timm's "batch size should be even").
    recipe = digits(epochs=1, workers=0, mixup=0.8, cutmix=1.0, img_size=16, test_sizes=[16])
    train_s = tiny_digits.samples("train")[:7]
    result = train(recipe, train_s, [], tiny_digits.classes, tmp_path / "run", console=QUIET)
    assert result.epochs_done == 1 and result.img_s > 0


def test_diverging_loss_stops_before_writing(tiny_digits, tmp_path, monkeypatch):
    import ee_timm.session as session_module

    class NanLoss(torch.nn.Module):
        def forward(self, logits, target):
            return logits.sum() * float("nan")

    def nan_loss(name, **params):
        return NanLoss()

    monkeypatch.setattr(session_module, "create_loss", nan_loss)
    recipe = digits(**FAST)
    train_s, val_s = training_samples(tiny_digits, recipe)
    with pytest.raises(DivergedError, match="diverged.*epoch 1, batch 1.*--lr"):
        train(recipe, train_s, val_s, tiny_digits.classes, tmp_path / "run", console=QUIET)
    assert not (tmp_path / "run" / "last.pth").exists()


def test_deferred_loss_reading_still_stops_before_writing(tiny_digits, tmp_path, monkeypatch):
    # As on a GPU: the loss is read at the first step and then every 4 steps. It turns NaN at
    # batch 2; the reading of steps 2-5 finds it and names batch 2, before any file is written.
    import ee_timm.session as session_module

    class NanFromSecondCall(torch.nn.Module):
        calls = 0

        def forward(self, logits, target):
            NanFromSecondCall.calls += 1
            loss = torch.nn.functional.cross_entropy(logits, target.argmax(-1))
            return loss * float("nan") if NanFromSecondCall.calls >= 2 else loss

    monkeypatch.setattr(session_module, "create_loss", lambda name, **params: NanFromSecondCall())
    monkeypatch.setattr(session_module.TrainingSession, "read_every", 4)
    recipe = digits(**FAST)  # 40 train images in batches of 8: 5 steps an epoch
    train_s, val_s = training_samples(tiny_digits, recipe)
    with pytest.raises(DivergedError, match="loss is nan at epoch 1, batch 2;"):
        train(recipe, train_s, val_s, tiny_digits.classes, tmp_path / "run", console=QUIET)
    assert NanFromSecondCall.calls == 5  # found at the reading after step 5, not before
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["recipe.yaml"]


def test_loss_watch_reads_every_few_steps_and_sums_like_a_per_step_read():
    from ee_timm.readings import LossWatch

    watch = LossWatch(epoch=2, every=3)
    steps = [(1.5, 8), (0.25, 8), (2.0, 4), (0.5, 8), (math.inf, 8)]
    for value, n in steps[:4]:
        watch.add(torch.tensor(value), n)
    # read at step 1 (1.5) and after steps 2-4: 1.5*8 + 0.25*8 + 2*4 + 0.5*8 = 26 over 28 images
    assert (watch.last, watch.loss_sum, watch.images) == (0.5, 26.0, 28)
    watch.add(torch.tensor(steps[4][0]), steps[4][1])  # pending, not read yet
    with pytest.raises(DivergedError, match="loss is inf at epoch 3, batch 5;"):
        watch.total()


def test_evaluation_sums_equal_reading_each_batch(tiny_digits):
    from ee_timm.loaders import eval_loader
    from ee_timm.readings import evaluation_sums

    recipe = digits()
    torch.manual_seed(0)
    model = build_model(recipe, 10).eval()
    loader = eval_loader(tiny_digits.samples("val"), eval_transform(32, recipe.crop_pct),
                         batch_size=6, workers=0)  # fmt: skip
    expected = [0.0, 0.0, 0.0, 0.0]  # each batch's numbers read one by one, added in Python
    with torch.no_grad():
        for images, targets in loader:
            logits = model(images).float()
            top5 = logits.topk(5, dim=1).indices
            expected[0] += float((top5[:, 0] == targets).sum())
            expected[1] += float((top5 == targets[:, None]).any(dim=1).sum())
            ce = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
            expected[2] += ce.item()
            expected[3] += len(targets)
    assert evaluation_sums(model, loader, torch.device("cpu")) == expected  # bit for bit


def test_checkpoint_saver_writes_snapshots_in_order_and_reports_failures(tmp_path):
    import threading

    from ee_timm.saver import CheckpointSaver, host_copy

    weights = torch.zeros(3)
    nested = host_copy({"w": [weights, (weights, 1)], "n": "x"})
    assert nested["w"][0].data_ptr() != weights.data_ptr() and nested["n"] == "x"
    assert isinstance(nested["w"][1], tuple) and torch.equal(nested["w"][1][0], weights)
    written, release = [], threading.Event()

    def slow_write(state, path):
        release.wait(10)
        written.append((state["w"].tolist(), path, threading.current_thread().name))

    with CheckpointSaver() as saver:
        saver.submit(slow_write, {"w": weights}, "a")
        weights += 1  # training goes on changing the live tensor: the snapshot stays
        assert written == []  # the training thread did not wait for the write
        release.set()
        saver.submit(slow_write, {"w": weights}, "b")
    assert [w[:2] for w in written] == [([0.0, 0.0, 0.0], "a"), ([1.0, 1.0, 1.0], "b")]
    assert all(w[2] != threading.current_thread().name for w in written)

    def failing_write(path):
        raise OSError(f"no space left for {path}")

    with pytest.raises(OSError, match="no space left for last.pth"):
        with CheckpointSaver() as saver:
            saver.submit(failing_write, "last.pth")
    with pytest.raises(OSError, match="no space left for best.pth"), CheckpointSaver() as saver:
        saver.submit(failing_write, "best.pth")
        saver.submit(failing_write, "last.pth")  # waits for the first, which failed
    with pytest.raises(KeyError), CheckpointSaver() as saver:  # the training error is the one
        saver.submit(failing_write, "last.pth")
        raise KeyError("training failed")


def test_snapshots_reuse_their_memory_epoch_after_epoch():
    from ee_timm.saver import CheckpointSaver, host_copy

    buffers: dict = {}
    live = {"model": {"w": torch.arange(4.0), "b": torch.ones(2)}, "epoch": 1}
    first = host_copy(live, buffers)
    live["model"]["w"] += 10  # training changes the live tensors in place
    second = host_copy(live, buffers)
    assert second["model"]["w"].data_ptr() == first["model"]["w"].data_ptr()  # same memory
    assert second["model"]["w"].tolist() == [10.0, 11.0, 12.0, 13.0]
    assert second["model"]["w"].data_ptr() != live["model"]["w"].data_ptr()
    live["model"]["w"] = torch.zeros(5)  # another shape: a new buffer, kept from now on
    third = host_copy(live, buffers)
    assert third["model"]["w"].tolist() == [0.0] * 5 and third["model"]["b"].tolist() == [1, 1]
    seen = []
    with CheckpointSaver() as saver:  # each write sees its own epoch's values
        for epoch in range(3):
            live["model"]["w"].fill_(epoch)
            saver.submit(lambda s: seen.append((s["model"]["w"].tolist(), s["epoch"])), live)
            live["epoch"] += 1
    assert seen == [([0.0] * 5, 1), ([1.0] * 5, 2), ([2.0] * 5, 3)]


def test_producer_registers_splits_and_trains(tiny_digits, tmp_path):
    from ensemble_engine.plugins import get_host
    from ensemble_engine.store import open_store

    producer = get_host().producers.get("timm").factory()
    assert isinstance(producer, TimmProducer)
    store = open_store(tmp_path / "s.zarr")
    overrides = {"epochs": 1, "img_size": 32, "workers": 0, "holdout": 0.25, "test_sizes": [32],
                 "tta": ["identity"]}  # fmt: skip
    request = ProduceRequest(
        recipe="resnet10t-ce", data_dir=tiny_digits.root, store=store, runs_dir=tmp_path / "runs",
        overrides=overrides, console=QUIET, run_id="mine",
    )  # fmt: skip
    # Validated on a hold-out of train, predicted on every split but train.
    assert sorted(producer.produce(request)) == ["resnet10t-ce-s32/test", "resnet10t-ce-s32/val"]
    assert store.get("resnet10t-ce-s32", "val").attrs["run"] == "mine"
    assert store.classes == tiny_digits.classes
    assert store.split_names() == ["test", "train", "val"]
    ids = [s.sample_id for s in tiny_digits.samples("val")]
    assert list(store.split("val").sample_ids) == ids
    saved = yaml.safe_load((tmp_path / "runs" / "mine" / "recipe.yaml").read_text())
    # A folder of small images gets the small-image profile (chosen from the images' sizes,
    # see ee_timm.data_profile), at the size asked for.
    assert (saved["defaults"], saved["aa"], saved["img_size"], saved["holdout"]) == (
        "digits", None, 32, 0.25,
    )  # fmt: skip


# --- the command line -------------------------------------------------------------------------


@pytest.fixture
def capture_producer():
    """A producer named ``capture`` that records the request it gets."""
    from ensemble_engine.hookspecs import hookimpl
    from ensemble_engine.plugins import get_host, reset_host
    from ensemble_engine.producer import Producer

    seen: list[ProduceRequest] = []

    class Capture(Producer):
        def produce(self, request):
            seen.append(request)
            return []

    class Plugin:
        @hookimpl
        def register_producers(self, register):
            register("capture", Capture)

    reset_host()
    get_host().add(Plugin(), "capture-plugin")
    yield seen
    reset_host()


def test_produce_passes_only_explicit_options(run_cli, capture_producer, tmp_path):
    store = tmp_path / "s.zarr"
    result = run_cli("produce", "capture", "--store", store)
    assert result.exit_code == 0, result.output
    assert capture_producer[-1].overrides == {}
    args = ["--epochs", "3", "--no-amp", "--vflip", "--aa", "none", "--lr", "1e-3",
            "--loss-param", "smoothing=0.1", "--loss-param", "order=2",
            "--set", "scale=0.35,1", "--test-sizes", "32,46", "--tta", "identity,hflip",
            "--run-id", "r1", "--name", "mine", "--force", "--data", tmp_path]  # fmt: skip
    result = run_cli("produce", "capture", "--store", store, *args)
    assert result.exit_code == 0, result.output
    request = capture_producer[-1]
    assert request.overrides == {
        "epochs": 3, "amp": False, "vflip": True, "aa": None, "lr": 1e-3,
        "loss_params": {"smoothing": 0.1, "order": 2}, "set": {"scale": "0.35,1"},
        "test_sizes": [32, 46], "tta": ["identity", "hflip"],
    }  # fmt: skip
    assert (request.run_id, request.name, request.force) == ("r1", "mine", True)
    assert request.data_dir == tmp_path and request.recipe == "capture"
    assert (request.subset, capture_producer[0].run_id, capture_producer[0].force) == (
        None, None, False,
    )  # fmt: skip
    weak = tmp_path / "weak.txt"
    weak.write_text("# confused most\n3\n\n8  # and its twin\n")
    args = ["--subset", weak, "--subset-per-class", "50", "--other-per-class", "2"]
    assert run_cli("produce", "capture", "--store", store, *args).exit_code == 0
    request = capture_producer[-1]
    assert request.subset == ["3", "8"]
    assert request.overrides == {"subset_per_class": 50, "other_per_class": 2}
    weak.write_text("# nothing\n")
    result = run_cli("produce", "capture", "--store", store, "--subset", weak)
    assert result.exit_code == 2 and "names no class" in result.stderr
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text("producer: capture\nbackbone: resnet18\nloss: ce\n")
    assert run_cli("produce", recipe_file, "--store", store).exit_code == 0
    assert capture_producer[-1].recipe == str(recipe_file)


def test_produce_errors_are_one_line(run_cli, tmp_path):
    result = run_cli("produce", "resnet181-ce", "--store", tmp_path / "s.zarr")
    assert result.exit_code == 2
    assert "unknown backbone 'resnet181'" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("produce", "resnet18-ce", "--set", "lr", "--store", tmp_path / "s.zarr")
    assert result.exit_code == 2 and "KEY=VALUE" in result.stderr


def test_recipes_lists_aliases_and_losses(run_cli):
    result = run_cli("recipes", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["backbones"]["resnest101"] == "resnest101e"
    losses = {loss["name"]: loss["aliases"] for loss in data["losses"]}
    assert "taylor" in losses["taylor_ce"] and "ls" in losses["label_smoothing"]
    assert set(data["defaults"]) == {"imagenet", "digits"}
    seed, small = data["profiles"]["imagenet"], data["profiles"]["digits"]
    assert (seed["mixup"], seed["cutmix"], seed["mixup_switch_prob"]) == (0.8, 1.0, 0.5)
    assert seed["tta"] == ["hflip", "color_jitter", "gauss_noise", "rotate"]
    assert (seed["noise_sigma"], seed["noise_mode"]) == ([20.0, 20.0], "channel_shared")
    assert (small["mixup"], small["cutmix"], small["noise"], small["tta"]) == (
        0,
        0,
        0,
        ["identity"],
    )
    assert "seed II-C.2" in data["sources"]["mixup"] and "III-A.4" in data["sources"]["noise_mode"]
    assert "mixup 0.8/cutmix 1" in data["defaults"]["imagenet"]
    table = run_cli("recipes").stdout  # the table shows them too
    assert "mixup_switch_prob" in table and "channel_shared" in table
