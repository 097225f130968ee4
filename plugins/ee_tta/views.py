"""Test-time views: batch transforms applied to normalised images on the model's device.

A view is ``view(images, generator) -> images`` where ``images`` is a float tensor
[B, 3, H, W] already normalised with the model's mean and std. Views that need pixel values
(colour jitter, noise) undo the normalisation (``x * std + mean`` gives [0, 1] pixels), work on
pixels, clamp to [0, 1] and normalise again, so they see the image a camera would give.

Random views draw every number from the ``generator`` they are handed, never from torch's
global state. The predictor seeds one generator per (seed, split, view, batch index) with
``view_generator``: a re-run with the same seed, batch size and device gives identical numbers.
The numbers do depend on the batch size (a batch draws its parameters in one stream) and on
the device type (CPU and CUDA generators give different streams); both are recorded in the
prediction's metadata. Random parameters are drawn per image, so images in one batch differ;
they stay on the device and are applied to the whole batch at once (``batched``), so a view
costs the same few kernel launches for any batch size and never waits for the device.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torchvision.transforms.v2.functional as TF
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ensemble_engine import RecipeError

from . import batched

View = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
Channels = tuple[float, ...]
ViewRequest = str | tuple[str, Mapping[str, Any]] | Mapping[str, Mapping[str, Any]]
NOISE_MODES = ("channel_shared", "per_channel")


def view_generator(seed: int, *keys: object, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded from ``seed`` and ``keys`` (e.g. split, view, batch).

    The keys are hashed with sha256 (Python's ``hash`` of a string changes between runs).
    """
    text = json.dumps([int(seed), *[str(k) for k in keys]])
    value = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1
    return torch.Generator(device=device).manual_seed(value)


def _channel_tensor(values: Channels, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, device=like.device, dtype=like.dtype).view(1, -1, 1, 1)


def to_pixels(images: torch.Tensor, mean: Channels, std: Channels) -> torch.Tensor:
    """Normalised images back to [0, 1] pixels (``x * std + mean``)."""
    return images * _channel_tensor(std, images) + _channel_tensor(mean, images)


def from_pixels(pixels: torch.Tensor, mean: Channels, std: Channels) -> torch.Tensor:
    """[0, 1] pixels, clamped, normalised again (``(p - mean) / std``)."""
    return (pixels.clamp(0.0, 1.0) - _channel_tensor(mean, pixels)) / _channel_tensor(std, pixels)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` draws from U(low, high) in float64, taken from ``generator`` and left on its device
    (reading them back to the host would make the host wait for the device every batch)."""
    u = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64)
    return low + (high - low) * u


@dataclass(frozen=True)
class Identity:
    """The image as it is."""

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return images


@dataclass(frozen=True)
class HFlip:
    """Mirror left-right."""

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return TF.horizontal_flip(images)


@dataclass(frozen=True)
class Rotate:
    """Rotate each image by its own angle drawn from U(-degrees, degrees), bilinear (the whole
    batch in one ``grid_sample``: ``batched.rotate``).

    Corners uncovered by the rotation are filled with 0 in normalised space, which is the
    dataset's mean colour: the least surprising fill for the model.
    """

    degrees: float = 10.0

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        angles = _uniform(len(images), -self.degrees, self.degrees, generator)
        return batched.in_chunks(batched.rotate, images, angles)


@dataclass(frozen=True)
class ColorJitter:
    """Brightness, contrast, saturation and hue changes, per image, on [0, 1] pixels.

    Factors are drawn per image: brightness, contrast and saturation from U(1 - x, 1 + x), hue
    from U(-hue, hue) (a fraction of the colour circle, at most 0.5). They are applied in that
    fixed order (torchvision's ColorJitter shuffles it; a fixed order keeps the view simple),
    to the whole batch at once (``batched``: torchvision's sums with per-image factors).
    """

    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.0
    mean: Channels = IMAGENET_DEFAULT_MEAN
    std: Channels = IMAGENET_DEFAULT_STD

    def __post_init__(self) -> None:
        for key in ("brightness", "contrast", "saturation"):
            value = getattr(self, key)
            if not 0 <= value <= 1:
                raise RecipeError(f"color_jitter {key} must lie in [0, 1], got {value}")
        if not 0 <= self.hue <= 0.5:
            raise RecipeError(f"color_jitter hue must lie in [0, 0.5], got {self.hue}")

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = len(images)
        b, c, s = (
            _uniform(n, 1 - x, 1 + x, generator)
            for x in (self.brightness, self.contrast, self.saturation)
        )
        h = _uniform(n, -self.hue, self.hue, generator)
        return batched.in_chunks(self._jitter, images, b, c, s, h)

    def _jitter(self, images: torch.Tensor, *factors: torch.Tensor) -> torch.Tensor:
        b, c, s, h = factors
        pixels = to_pixels(images, self.mean, self.std).clamp(0.0, 1.0)
        pixels = batched.adjust_brightness(pixels, b)
        pixels = batched.adjust_contrast(pixels, c)
        pixels = batched.adjust_saturation(pixels, s)
        if self.hue:
            pixels = batched.adjust_hue(pixels, h)
        return from_pixels(pixels, self.mean, self.std)


@dataclass(frozen=True)
class GaussNoise:
    """Additive Gaussian noise of standard deviation ``sigma`` on the 0-255 pixel scale.

    The noise is added to pixels (``sigma / 255`` on the [0, 1] scale), which are then clamped
    to the valid range, as with noise added to an image file. The default is the seed's
    "Gaussian noise 0, 1, 20" (its training noise, used again in its test phase): σ = 20 and
    ``mode="channel_shared"``, one N(0, 1) field per image added to all three channels (grey
    noise, as ``AddGaussianNoise`` draws it); ``mode="per_channel"`` draws one per channel.
    """

    sigma: float = 20.0
    mode: str = "channel_shared"
    mean: Channels = IMAGENET_DEFAULT_MEAN
    std: Channels = IMAGENET_DEFAULT_STD

    def __post_init__(self) -> None:
        if self.sigma < 0:
            raise RecipeError(f"gauss_noise sigma must be >= 0, got {self.sigma}")
        if self.mode not in NOISE_MODES:
            raise RecipeError(
                f"gauss_noise mode must be one of {', '.join(NOISE_MODES)}, got {self.mode!r}"
            )

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, c, h, w = images.shape
        shape = (b, c, h, w) if self.mode == "per_channel" else (b, 1, h, w)
        noise = torch.randn(shape, generator=generator, device=images.device, dtype=images.dtype)
        pixels = to_pixels(images, self.mean, self.std) + noise * (self.sigma / 255.0)
        return from_pixels(pixels, self.mean, self.std)


# --- building views from names ----------------------------------------------------------------


def view_label(name: str, params: Mapping[str, Any]) -> str:
    """The view's name in metadata and prediction names: ``rotate`` or ``rotate,degrees=5``."""
    parts = [name] + [f"{k}={_fmt(v)}" for k, v in sorted(params.items())]
    return ",".join(parts)


def _fmt(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def _split_request(request: ViewRequest) -> tuple[str, dict[str, Any]]:
    if isinstance(request, str):
        return request, {}
    if isinstance(request, tuple) and len(request) == 2:
        return str(request[0]), dict(request[1] or {})
    if isinstance(request, Mapping) and len(request) == 1:
        ((name, params),) = request.items()
        return str(name), dict(params or {})
    raise RecipeError(
        f"cannot read TTA view {request!r}: give a name, (name, params) or {{name: params}}"
    )


def build_views(
    requests: Sequence[ViewRequest],
    *,
    mean: Channels = IMAGENET_DEFAULT_MEAN,
    std: Channels = IMAGENET_DEFAULT_STD,
) -> dict[str, View]:
    """Views by label, in order, built through the registry of TTA views.

    Factories that take ``mean`` and ``std`` receive the model's normalisation.
    """
    from ensemble_engine import get_registry

    if not requests:
        raise RecipeError("no TTA views given; use at least one, e.g. identity")
    registry = get_registry("tta_views")
    views: dict[str, View] = {}
    for request in requests:
        name, params = _split_request(request)
        entry = registry.get(name)
        label = view_label(entry.name, params)
        if label in views:
            raise RecipeError(f"TTA view {label!r} is listed twice; list each view once")
        views[label] = _build(entry.name, entry.factory, params, mean, std)
    return views


def _build(
    name: str, factory: Callable[..., View], params: dict[str, Any], mean: Channels, std: Channels
) -> View:
    signature = inspect.signature(factory)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    kwargs = dict(params)
    for key, value in (("mean", tuple(mean)), ("std", tuple(std))):
        if key not in kwargs and (accepts_any or key in signature.parameters):
            kwargs[key] = value
    try:
        signature.bind(**kwargs)
    except TypeError:
        known = ", ".join(k for k in signature.parameters if k not in ("mean", "std")) or "none"
        raise RecipeError(
            f"TTA view {name!r} does not take {sorted(params)}; its parameters: {known}"
        ) from None
    return factory(**kwargs)
