"""TTA views, merge modes and streaming multi-size prediction into the store (CPU, tiny data)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import timm
import torch
from ee_data import load_image, write_digits
from ee_data.imagefolder import ImageFolderSource
from ee_tta import (
    build_views,
    check_test_size,
    forward_views,
    merge_kind,
    merge_views,
    predict_sizes,
    predict_split,
    view_generator,
)
from ee_tta.evaldata import (
    SharedBatches,
    SplitImages,
    batch_parts,
    eval_config,
    group_batches,
    size_batches,
)
from ee_tta.views import ColorJitter, GaussNoise, Rotate, from_pixels, to_pixels
from PIL import Image
from rich.console import Console
from torch.utils.data import DataLoader
from torchvision import transforms

from ensemble_engine.errors import AlignmentError, PluginError, RecipeError, StoreError
from ensemble_engine.plugins import get_host
from ensemble_engine.prediction_io import PredictionWriter
from ensemble_engine.store import open_store

SPLITS = ("train", "val")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> ImageFolderSource:
    root = tmp_path_factory.mktemp("tta") / "digits"
    write_digits(root, train_per_class=3, val_per_class=2, size=16)
    return ImageFolderSource(root)


@pytest.fixture
def store(tmp_path, digits):
    store = open_store(tmp_path / "store.zarr", "w")
    store.set_classes(digits.classes)
    for split in SPLITS:
        samples = digits.samples(split)
        store.add_split(split, [s.sample_id for s in samples], [s.label for s in samples])
    return store


@pytest.fixture(scope="module")
def timm_net() -> torch.nn.Module:
    """timm's own small test network (bicubic, crop_pct 0.95 in its pretrained config)."""
    torch.manual_seed(0)
    return timm.create_model("test_efficientnet", pretrained=False, num_classes=10).eval()


def tiny_net(fixed_size: int | None = None) -> torch.nn.Module:
    """A small conv net; with ``fixed_size`` it declares a fixed input size as timm models do."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    )
    net.pretrained_cfg = {
        "input_size": (3, fixed_size or 16, fixed_size or 16),
        "crop_pct": 1.0,
        "fixed_input_size": fixed_size is not None,
        "architecture": "tinynet",
    }
    return net.eval()


def images_batch(n: int = 4, size: int = 12, seed: int = 0) -> torch.Tensor:
    pixels = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return from_pixels(pixels, MEAN, STD)


# --- views ------------------------------------------------------------------------------------


def test_builtin_views_are_registered():
    registry = get_host().tta_views
    for name in ("identity", "hflip", "rotate", "color_jitter", "gauss_noise"):
        assert registry.get(name).plugin == "ee_tta"
    assert registry.resolve("flip") == "hflip"


def test_identity_is_a_no_op_and_hflip_mirrors():
    x = images_batch()
    views = build_views(["identity", "hflip"])
    gen = view_generator(0, "x")
    assert torch.equal(views["identity"](x, gen), x)
    flipped = views["hflip"](x, gen)
    for j in range(x.shape[-1]):
        assert torch.equal(flipped[..., j], x[..., x.shape[-1] - 1 - j])


@pytest.mark.parametrize("name", ["rotate", "color_jitter", "gauss_noise"])
def test_random_views_are_seeded(name):
    x = images_batch()
    view = build_views([name], mean=MEAN, std=STD)[name]
    a = view(x, view_generator(3, "val", name, 0))
    b = view(x, view_generator(3, "val", name, 0))
    c = view(x, view_generator(4, "val", name, 0))
    assert a.shape == x.shape and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, x)


def test_gauss_noise_has_sigma_on_the_255_scale():
    # Mid-grey pixels (0.5) stay far from the clamp at 0 and 1 for sigma = 25.5 / 255 = 0.1.
    pixels = torch.full((8, 3, 32, 32), 0.5)
    noisy = GaussNoise(sigma=25.5, mean=MEAN, std=STD)(
        from_pixels(pixels, MEAN, STD), view_generator(0, "noise")
    )
    diff = to_pixels(noisy, MEAN, STD) - pixels
    assert abs(diff.mean().item()) < 0.005
    assert diff.std().item() == pytest.approx(0.1, rel=0.03)


def test_gauss_noise_default_is_the_seeds_grey_sigma_20_field():
    # AddGaussianNoise(0, 1, 20): 20 * N(0, 1) on the 0-255 scale, one field for R, G and B.
    pixels = torch.full((8, 3, 48, 48), 0.5)
    images = from_pixels(pixels, MEAN, STD)
    diff = to_pixels(GaussNoise(mean=MEAN, std=STD)(images, view_generator(0, "n")), MEAN, STD)
    diff = diff - pixels
    torch.testing.assert_close(diff[:, 0], diff[:, 1], rtol=0, atol=1e-5)  # float rounding
    torch.testing.assert_close(diff[:, 1], diff[:, 2], rtol=0, atol=1e-5)
    assert diff[:, 0].std().item() == pytest.approx(20 / 255, rel=0.03)
    assert abs(diff.mean().item()) < 0.003
    per = GaussNoise(mode="per_channel", mean=MEAN, std=STD)(images, view_generator(0, "n"))
    per = to_pixels(per, MEAN, STD) - pixels
    assert (per[:, 0] - per[:, 1]).abs().max() > 0.1  # independent channels
    assert per.std().item() == pytest.approx(20 / 255, rel=0.03)
    with pytest.raises(RecipeError, match="mode must be one of"):
        GaussNoise(mode="grey")


def test_color_jitter_brightness_scales_pixels_per_image():
    pixels = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.8
    view = ColorJitter(brightness=0.2, contrast=0, saturation=0, mean=MEAN, std=STD)
    out = to_pixels(view(from_pixels(pixels, MEAN, STD), view_generator(0, "j")), MEAN, STD)
    # out = factor * pixels per image (0.8 * 1.2 < 1: nothing is clamped); least-squares factor
    factors = (out * pixels).sum((1, 2, 3)) / (pixels * pixels).sum((1, 2, 3))
    assert torch.allclose(out, factors.view(-1, 1, 1, 1) * pixels, atol=1e-5)
    assert ((factors >= 0.8) & (factors <= 1.2)).all() and factors.unique().numel() == 5
    still = ColorJitter(brightness=0, contrast=0, saturation=0, mean=MEAN, std=STD)
    x = from_pixels(pixels, MEAN, STD)
    assert torch.allclose(still(x, view_generator(0, "j")), x, atol=1e-5)


def test_rotate_turns_each_image_by_its_own_angle_and_fills_with_the_mean():
    x = torch.ones(3, 3, 21, 21)
    out = Rotate(degrees=45)(x, view_generator(0, "r"))
    assert torch.equal(out[:, :, 10, 10], x[:, :, 10, 10])  # the centre stays
    assert not torch.equal(out[0], out[1])  # same image, different angles
    corner = out[:, :, 0, 0]
    assert (corner < 1).any() and (corner >= 0).all()  # filled towards 0, the mean colour
    assert torch.allclose(Rotate(degrees=0)(x, view_generator(0, "r")), x)


def test_view_requests_are_checked():
    with pytest.raises(PluginError, match="unknown tta view 'mirror'"):
        build_views(["mirror"])
    with pytest.raises(RecipeError, match="does not take"):
        build_views([("rotate", {"angle": 5})])
    with pytest.raises(RecipeError, match="listed twice"):
        build_views(["hflip", "flip"])
    views = build_views([{"rotate": {"degrees": 5.0}}, ("gauss_noise", {"sigma": 3})])
    assert list(views) == ["rotate,degrees=5", "gauss_noise,sigma=3"]


# --- merge modes ------------------------------------------------------------------------------


def test_merge_modes_against_hand_computation():
    # view 1: logits (0, ln 3) -> probs (1/4, 3/4); view 2: logits (0, 0) -> probs (1/2, 1/2)
    outputs = torch.tensor([[[0.0, math.log(3)]], [[0.0, 0.0]]])
    assert torch.allclose(merge_views(outputs, "mean_logits"), torch.tensor([[0, math.log(3) / 2]]))
    assert torch.allclose(merge_views(outputs, "mean_probs"), torch.tensor([[0.375, 0.625]]))
    # geometric means sqrt(1/8) = 0.353553, sqrt(3/8) = 0.612372; normalised by their sum 0.965926
    gmean = merge_views(outputs, "gmean")
    assert torch.allclose(gmean.exp(), torch.tensor([[0.366025, 0.633975]]), atol=1e-6)
    assert [merge_kind(m) for m in ("mean_logits", "mean_probs", "gmean")] == [
        "logits",
        "probs",
        "logits",
    ]
    with pytest.raises(RecipeError, match="unknown TTA merge 'median'"):
        merge_kind("median")


# --- prediction into the store ----------------------------------------------------------------


def direct_logits(model, samples, size):
    """torchvision's resize-shorter-side + centre crop, then model(x) and model(flip(x))."""
    crop_pct = model.pretrained_cfg["crop_pct"]
    prepare = transforms.Compose(
        [
            transforms.Resize(math.floor(size / crop_pct), transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    x = torch.stack([prepare(load_image(s.path)) for s in samples])
    with torch.no_grad():
        return ((model(x) + model(torch.flip(x, dims=[3]))) / 2).numpy()


def test_stored_logits_equal_a_direct_forward_pass(timm_net, digits, store):
    ids = predict_sizes(
        timm_net,
        digits,
        SPLITS,
        [16, 24],
        ["identity", "hflip"],
        store=store,
        name="r10-ce",
        batch_size=16,
        device="cpu",
        meta={"loss": "ce"},
    )
    assert ids == [f"r10-ce-s{size}/{split}" for size in (16, 24) for split in SPLITS]
    for size in (16, 24):
        for split in SPLITS:
            expected = direct_logits(timm_net, digits.samples(split), size)
            got = store.read(f"r10-ce-s{size}", split)
            np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3)
            pred = store.get(f"r10-ce-s{size}", split)
            assert pred.kind == "logits"
            assert pred.attrs["test_size"] == size and pred.attrs["loss"] == "ce"
            assert pred.attrs["tta"] == ["identity", "hflip"]
            assert pred.attrs["merge"] == "mean_logits"
            labels = store.split(split).labels
            assert pred.metrics["top1"] == pytest.approx(np.mean(got.argmax(1) == labels))


def test_predictions_stream_one_block_per_batch_and_keep_views(digits, store, monkeypatch):
    blocks: dict[str, list[int]] = {}
    original = PredictionWriter.write

    def counting_write(self, block):
        blocks.setdefault(self.id, []).append(len(block))
        original(self, block)

    monkeypatch.setattr(PredictionWriter, "write", counting_write)
    samples = digits.samples("train")  # 30 images in batches of 7: 7, 7, 7, 7, 2
    ids = predict_split(
        tiny_net(),
        samples,
        store=store,
        name="tiny",
        split="train",
        test_size=16,
        views=["identity", "gauss_noise"],
        merge="gmean",
        batch_size=7,
        device="cpu",
        keep_views=True,
        console=Console(file=io.StringIO()),
    )
    views = ["tiny.view-identity/train", "tiny.view-gauss_noise/train"]
    assert ids == ["tiny/train", *views]
    for pred_id in ids:
        assert blocks[pred_id] == [7, 7, 7, 7, 2]
    merged = store.get("tiny", "train")
    assert merged.kind == "logits" and merged.metrics["n"] == 30
    assert {"top1", "top5", "nll"} <= set(merged.metrics)
    per_view = torch.tensor(np.stack([store.read(*v.split("/")) for v in views]))
    assert store.get("tiny.view-gauss_noise", "train").attrs["view"] == "gauss_noise"
    np.testing.assert_allclose(
        store.read("tiny", "train"), merge_views(per_view, "gmean"), atol=2e-3
    )


def test_random_views_reproduce_batch_by_batch(digits, store):
    net, samples = tiny_net(), digits.samples("val")
    options = dict(
        store=store,
        split="val",
        test_size=16,
        views=["rotate", "color_jitter"],
        merge="mean_probs",
        batch_size=8,
        device="cpu",
    )
    predict_split(net, samples, name="a", seed=5, **options)
    predict_split(net, samples, name="b", seed=5, **options)
    predict_split(net, samples, name="c", seed=6, **options)
    a = store.read("a", "val")
    assert store.get("a", "val").kind == "probs"
    np.testing.assert_allclose(a.sum(1), 1, atol=2e-3)
    np.testing.assert_array_equal(a, store.read("b", "val"))
    assert not np.allclose(a, store.read("c", "val"), atol=1e-3)

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    views = build_views(["rotate", "color_jitter"], mean=MEAN, std=STD)
    expected = []
    with torch.no_grad():
        for batch_index, start in enumerate(range(0, len(samples), 8)):
            x = torch.stack([transform(load_image(s.path)) for s in samples[start : start + 8]])
            outputs = forward_views(net, x, views, seed=5, keys=("val", batch_index))
            expected.append(merge_views(outputs, "mean_probs").numpy())
    np.testing.assert_allclose(a, np.concatenate(expected), atol=1e-3)


def test_fixed_size_backbone_refuses_other_sizes(digits, store):
    net = tiny_net(fixed_size=16)
    check_test_size(net, 16)
    with pytest.raises(RecipeError, match="tinynet takes only 16x16 inputs, not test size 24"):
        predict_sizes(
            net, digits, SPLITS, [16, 24], ["identity"], store=store, name="fixed", device="cpu"
        )
    assert store.names() == []  # every size is checked before any is predicted


def test_samples_must_match_the_registered_split(digits, store):
    with pytest.raises(AlignmentError, match="not the 20 samples"):
        predict_split(
            tiny_net(),
            digits.samples("train"),
            store=store,
            name="x",
            split="val",
            test_size=16,
            views=["identity"],
            device="cpu",
        )


def test_a_model_with_another_class_count_is_refused_and_nothing_is_kept(digits, store):
    with pytest.raises(RecipeError, match="outputs 10 classes but sub/val has 2"):
        predict_split(
            tiny_net(),
            digits.samples("val"),
            store=store,
            name="sub",
            split="val",
            test_size=16,
            views=["identity"],
            device="cpu",
            classes=["0", "1"],
        )
    assert not store.exists("sub", "val", include_incomplete=True)


# --- one read of a split for every test size --------------------------------------------------


def test_batch_parts_cut_each_batch_without_crossing_it():
    # 10 rows in batches of 4 (0-3, 4-7, 8-9), each cut in up to 3 near-equal runs
    assert batch_parts(10, 4, 3) == [[0], [1], [2, 3], [4], [5], [6, 7], [8], [9]]
    assert batch_parts(5, 8, 1) == [[0, 1, 2, 3, 4]]
    assert batch_parts(0, 8, 4) == []


@pytest.mark.parametrize("uint8", [False, True], ids=["float", "uint8"])
@pytest.mark.parametrize("workers", [0, 2])
def test_size_batches_are_the_whole_batch_loaders_tensors(timm_net, digits, workers, uint8):
    # uint8: the loader stops at uint8 images and each batch is normalised after, bit for bit
    samples = digits.samples("train")  # 30 images in batches of 7: 7, 7, 7, 7, 2
    cfg = eval_config(timm_net)
    whole = [cfg.transform(size) for size in (16, 24)]
    transforms_, normalize = cfg.loader_transforms([16, 24]) if uint8 else (whole, None)
    assert (normalize is not None) == uint8
    got = list(
        size_batches(
            samples,
            transforms_,
            batch_size=7,
            workers=workers,
            device=torch.device("cpu"),
            normalize=normalize,
        )
    )
    for i, transform in enumerate(whole):
        expected = list(DataLoader(SplitImages(samples, transform), batch_size=7))
        assert [len(b[i]) for b in got] == [7, 7, 7, 7, 2]
        assert all(b[i].dtype == torch.float32 for b in got)
        assert all(torch.equal(b[i], e) for b, e in zip(got, expected, strict=True))


@pytest.mark.parametrize(
    ("crop_pct", "interpolation", "size"),
    [(0.875, "bilinear", 32), (1.0, "bicubic", 24), (0.95, "bicubic", 41)],
)
def test_split_eval_transform_gives_the_same_floats_bit_for_bit(crop_pct, interpolation, size):
    cfg = eval_config(
        tiny_net(), crop_pct=crop_pct, interpolation=interpolation,
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
    )  # fmt: skip
    per_image, normalize = cfg.split_transform(size)
    assert normalize is not None
    rng = np.random.default_rng(5)
    pictures = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in ((50, 37), (size, size), (9, 70))
    ]
    parts = [per_image(p) for p in pictures]
    assert all(p.dtype == torch.uint8 and p.shape == (3, size, size) for p in parts)
    expected = torch.stack([cfg.transform(size)(p) for p in pictures])
    assert torch.equal(normalize(torch.stack(parts)), expected)


def test_eval_transform_that_does_not_end_in_normalise_is_not_cut(monkeypatch):
    cfg = eval_config(tiny_net())
    monkeypatch.setattr(type(cfg), "transform", lambda self, size: transforms.Resize(size))
    per_image, normalize = cfg.split_transform(16)
    assert normalize is None and isinstance(per_image, transforms.Resize)
    whole, normalize = cfg.loader_transforms([16, 24])
    assert normalize is None and [t.size for t in whole] == [16, 24]


@pytest.mark.parametrize("workers", [0, 2])
def test_group_batches_read_splits_through_one_loader_as_each_alone(digits, workers):
    groups = [digits.samples(split) for split in SPLITS]  # 30 and 20 images, batches of 7
    cfg = eval_config(tiny_net())
    per_image, normalize = cfg.loader_transforms([16, 24])
    options = dict(batch_size=7, workers=workers, device=torch.device("cpu"), normalize=normalize)
    got = list(group_batches(groups, per_image, **options))
    assert [g for g, _ in got] == [0] * 5 + [1] * 3
    for index, samples in enumerate(groups):
        alone = list(size_batches(samples, per_image, **options))
        mine = [batch for g, batch in got if g == index]
        assert len(mine) == len(alone)
        for a, b in zip(mine, alone, strict=True):
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    shared = SharedBatches(groups, per_image, **options)
    assert shared.counts == [5, 3]
    with pytest.raises(RuntimeError, match="group 1 asked for while group 0"):
        next(shared.group(1))
    shared.close()


def test_predict_sizes_starts_one_loader_for_every_split(digits, store, monkeypatch):
    import ee_tta.evaldata as evaldata

    started = []

    class CountingLoader(DataLoader):
        def __iter__(self):
            started.append(len(self.dataset))
            return super().__iter__()

    monkeypatch.setattr(evaldata, "DataLoader", CountingLoader)
    options = dict(views=["identity"], batch_size=8, device="cpu", dtype="float32", workers=2)
    net = tiny_net()
    predict_sizes(net, digits, SPLITS, [16, 24], store=store, name="one", **options)
    assert started == [50]  # train and val (30 + 20 images) through one loader, once
    for split in SPLITS:
        predict_split(
            net, digits.samples(split), store=store, name="alone-s16", split=split, test_size=16,
            **options,
        )  # fmt: skip
        np.testing.assert_array_equal(store.read("one-s16", split), store.read("alone-s16", split))
    assert started == [50, 30, 20]


def test_predict_sizes_equals_predict_split_size_by_size(digits, store):
    # One read of each split, in parts over 2 workers, against a whole-batch read per size
    net = tiny_net()
    options = dict(
        views=["identity", "rotate", "color_jitter"], merge="mean_probs", batch_size=7,
        device="cpu", seed=4, keep_views=True, dtype="float32",
    )  # fmt: skip
    ids = predict_sizes(
        net, digits, SPLITS, [24, 16], store=store, name="one", workers=2, **options
    )
    alone = []
    for size in (24, 16):
        for split in SPLITS:
            alone += predict_split(
                net, digits.samples(split), store=store, name=f"alone-s{size}", split=split,
                test_size=size, **options,
            )  # fmt: skip
    assert ids == [i.replace("alone", "one") for i in alone]
    assert len(ids) == 2 * 2 * 4  # sizes x splits x (merged + 3 views)
    for one_id, alone_id in zip(ids, alone, strict=True):
        one, by_itself = one_id.split("/"), alone_id.split("/")
        np.testing.assert_array_equal(store.read(*one), store.read(*by_itself))  # bit for bit
        attrs = [dict(store.get(*pred).attrs) for pred in (one, by_itself)]
        costs = [a.pop("cost") for a in attrs]  # measured rates differ; members are own names
        for a, cost, pred in zip(attrs, costs, (one, by_itself), strict=True):
            del a["created"]
            assert cost.pop("members") == [pred[0]] and cost.pop("images_per_s") > 0
        assert attrs[0] == attrs[1] and costs[0] == costs[1]


def test_predict_sizes_checks_every_name_before_reading_and_frees_its_locks(
    timm_net, digits, store, tmp_path
):
    options = dict(views=["identity"], batch_size=8, device="cpu")
    predict_split(
        timm_net, digits.samples("val"), store=store, name="m-s24", split="val", test_size=24,
        **options,
    )  # fmt: skip
    with pytest.raises(StoreError, match="m-s24/val already exists"):
        predict_sizes(timm_net, digits, ["val"], [16, 24], store=store, name="m", **options)
    assert not store.exists("m-s16", "val", include_incomplete=True)
    # m-s16's writer, opened before m-s24's refused, gave its lock back
    assert not list((tmp_path / ".store.zarr.locks").glob("*.lock"))
    with pytest.raises(RecipeError, match="repeat a size"):
        predict_sizes(timm_net, digits, ["val"], [16, 16], store=store, name="m", **options)


def test_host_blocks_are_handed_on_in_order_one_late():
    from ee_tta.streaming import _HostBlocks

    seen = []
    lagged = _HostBlocks(lambda start, size, blocks: seen.append((start, size, blocks)), lag=1)
    for start in (0, 4, 8):
        lagged.add(start, start % 3, torch.full((2, 4, 3), float(start)))
        assert [s for s, _, _ in seen] == list(range(0, start, 4))  # all but the newest
    lagged.flush()
    assert [(s, size) for s, size, _ in seen] == [(0, 0), (4, 1), (8, 2)]
    assert all(isinstance(b, np.ndarray) and (b == s).all() for s, _, b in seen)
