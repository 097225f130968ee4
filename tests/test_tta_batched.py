"""Per-image parameters applied to whole batches (``ee_tta.batched``) and the views built on
them, against torchvision's own functional ops applied image by image."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from ee_tta import batched, view_generator
from ee_tta.views import ColorJitter, Rotate, from_pixels, to_pixels
from helpers import op_counter
from torchvision.transforms import InterpolationMode

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def pixels(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Random [0, 1] pixels with some grey pixels (all channels equal) and some saturated."""
    g = torch.Generator().manual_seed(seed)
    out = torch.rand(n, 3, h, w, generator=g)
    out[:, :, 0, :] = out[:, :1, 0, :]  # a grey row: hue undefined, saturation 0
    out[:, :, 1, :2] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1)  # pure red
    return out


def one_by_one(fn, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    return torch.stack([fn(image, p) for image, p in zip(images, params.tolist(), strict=True)])


@pytest.mark.parametrize("shape", [(13, 13), (12, 19), (40, 31)])
def test_rotate_equals_torchvision_rotate_per_image(shape):
    images = torch.randn(6, 3, *shape, generator=torch.Generator().manual_seed(1))
    angles = torch.tensor([-170.0, -45.0, -3.5, 10.0, 33.3, 125.0], dtype=torch.float64)

    def reference(image, angle):
        return TF.rotate(image, angle, interpolation=InterpolationMode.BILINEAR, fill=[0.0])

    expected = one_by_one(reference, images, angles)
    assert torch.allclose(batched.rotate(images, angles), expected, atol=1e-4)
    still = batched.rotate(images, torch.zeros(6, dtype=torch.float64))
    assert torch.allclose(still, images, atol=1e-5)


@pytest.mark.parametrize(
    ("ours", "theirs", "low", "high"),
    [
        (batched.adjust_brightness, TF.adjust_brightness, 0.3, 1.8),
        (batched.adjust_contrast, TF.adjust_contrast, 0.3, 1.8),
        (batched.adjust_saturation, TF.adjust_saturation, 0.0, 2.0),
        (batched.adjust_hue, TF.adjust_hue, -0.5, 0.5),
    ],
)
def test_colour_ops_equal_torchvision_per_image(ours, theirs, low, high):
    images = pixels(7, 9, 11)
    factors = torch.linspace(low, high, 7, dtype=torch.float64)
    expected = one_by_one(theirs, images, factors)
    out = ours(images, factors)
    assert out.shape == images.shape
    assert torch.allclose(out, expected, atol=2e-6)


def test_hue_shift_moves_pure_colours_round_the_circle():
    # by hand: a third of the circle turns red into green and green into blue
    rgb = torch.eye(3).view(3, 3, 1, 1)  # red, green, blue images of one pixel
    turned = batched.adjust_hue(rgb, torch.full((3,), 1 / 3, dtype=torch.float64))
    assert torch.allclose(turned.view(3, 3), torch.eye(3).roll(1, dims=1), atol=1e-6)
    grey = torch.full((2, 3, 2, 2), 0.4)
    assert torch.equal(batched.adjust_hue(grey, torch.tensor([0.25, -0.5])), grey)


def test_a_cpu_batch_is_worked_in_slices_with_the_same_result(monkeypatch):
    images = torch.randn(7, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    angles = torch.linspace(-30, 30, 7, dtype=torch.float64)
    whole = batched.in_chunks(batched.rotate, images, angles)
    calls = []

    def rotate(x, a):
        calls.append(len(x))
        return batched.rotate(x, a)

    monkeypatch.setattr(batched, "CPU_CHUNK_BYTES", 3 * images[0].numel() * 4)
    sliced = batched.in_chunks(rotate, images, angles)
    assert calls == [3, 3, 1]
    assert torch.allclose(sliced, whole, atol=1e-6)
    assert torch.allclose(whole, batched.rotate(images, angles), atol=1e-6)


def views_the_old_way(view, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The view as it was applied image by image with torchvision, drawing the same numbers."""

    def draw(low: float, high: float) -> list[float]:
        u = torch.rand(len(images), generator=generator, dtype=torch.float64)
        return (low + (high - low) * u).tolist()

    if isinstance(view, Rotate):
        angles = draw(-view.degrees, view.degrees)
        return torch.stack(
            [
                TF.rotate(image, a, interpolation=InterpolationMode.BILINEAR, fill=[0.0])
                for image, a in zip(images, angles, strict=True)
            ]
        )
    b, c, s = (draw(1 - x, 1 + x) for x in (view.brightness, view.contrast, view.saturation))
    h = draw(-view.hue, view.hue)
    out = []
    for i, image in enumerate(to_pixels(images, MEAN, STD).clamp(0.0, 1.0)):
        image = TF.adjust_saturation(
            TF.adjust_contrast(TF.adjust_brightness(image, b[i]), c[i]), s[i]
        )
        out.append(TF.adjust_hue(image, h[i]) if view.hue else image)
    return from_pixels(torch.stack(out), MEAN, STD)


@pytest.mark.parametrize(
    "view",
    [
        Rotate(degrees=30),
        ColorJitter(mean=MEAN, std=STD),
        ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, mean=MEAN, std=STD),
    ],
)
def test_views_draw_the_same_numbers_and_give_the_per_image_result(view):
    images = from_pixels(pixels(5, 10, 14, seed=3), MEAN, STD)
    out = view(images, view_generator(7, "val", "v", 0))
    expected = views_the_old_way(view, images, view_generator(7, "val", "v", 0))
    assert torch.allclose(out, expected, atol=3e-5)


HOST_READS = ("tolist", "item", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu")


@pytest.mark.parametrize(
    "view", [Rotate(), ColorJitter(hue=0.1, mean=MEAN, std=STD)], ids=["rotate", "jitter"]
)
def test_random_views_run_the_same_ops_for_any_batch_and_read_nothing_back(view, monkeypatch):
    counts = []
    for n in (2, 16):
        images = torch.randn(n, 3, 8, 8)
        with op_counter() as mode:
            view(images, view_generator(0, "ops", n))
        counts.append(mode.ops)
    assert counts[0] == counts[1]  # no op per image: a GPU launches as many kernels for 2 as 16

    def host_read(*args, **kwargs):
        raise AssertionError("a view read a tensor back to the host (on CUDA: a wait)")

    for method in HOST_READS:  # on a CPU tensor these read memory without dispatching an op
        monkeypatch.setattr(torch.Tensor, method, host_read)
    view(torch.randn(4, 3, 8, 8), view_generator(0, "ops"))


def test_batched_ops_stay_on_the_images_device():
    # "meta" tensors refuse any tensor from another device, as CUDA does: nothing in these ops
    # is made on the CPU behind the caller's back (parameters drawn elsewhere are moved over)
    images = torch.empty(4, 3, 8, 6, device="meta")
    on_device = torch.empty(4, dtype=torch.float64, device="meta")
    for op in (
        batched.rotate,
        batched.adjust_brightness,
        batched.adjust_contrast,
        batched.adjust_saturation,
        batched.adjust_hue,
    ):
        for params in (on_device, torch.rand(4, dtype=torch.float64)):
            out = batched.in_chunks(op, images, params)
            assert out.device.type == "meta" and out.shape == images.shape
