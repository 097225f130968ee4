"""Image ops with one parameter per image, applied to a whole batch in one set of tensor ops.

torchvision's functional ops take one angle or factor per call, so a per-image parameter
means a Python loop over the batch: on a GPU, a few kernel launches per image and a read of
the parameters back to the host (a wait for the GPU) every batch. These do the same sums as
torchvision's tensor kernels with the parameters as tensors on the images' device: the number
of ops does not grow with the batch and nothing is read back. Each is tested against
torchvision applied image by image (equal up to float rounding).

Parameters are 1-D tensors with one value per image, any float dtype (the views draw them in
float64, as torchvision's Python floats are); images are float [B, C, H, W].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

CPU_CHUNK_BYTES = 2 << 20  # a few images at 224 px: they stay in a core's cache between ops


def in_chunks(
    fn: Callable[..., torch.Tensor], images: torch.Tensor, *params: torch.Tensor
) -> torch.Tensor:
    """``fn(images, *params)``, on a CPU over slices of the batch of about ``CPU_CHUNK_BYTES``.

    The ops work image by image, so slicing the batch changes the result by float rounding at
    most (the slices depend only on the image size, so a re-run gives the same). On a CPU
    a whole batch at 224 px passes through memory once per op, slower than a few images that
    stay in cache; on a GPU one launch per op for the whole batch is what counts.
    """
    if images.device.type != "cpu" or len(images) == 0:
        return fn(images, *params)
    step = max(1, CPU_CHUNK_BYTES // (images[0].numel() * images.element_size()))
    if step >= len(images):
        return fn(images, *params)
    return torch.cat(
        [
            fn(images[i : i + step], *(p[i : i + step] for p in params))
            for i in range(0, len(images), step)
        ]
    )


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] parameters as [B, 1, 1, 1] in ``like``'s dtype and device, to broadcast over images."""
    return values.to(device=like.device, dtype=like.dtype).view(-1, 1, 1, 1)


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Each image turned anticlockwise by its angle about its centre, bilinear, corners 0.

    torchvision's ``rotate(image, angle, BILINEAR, fill=[0.0])`` for every image at once: the
    same inverse rotation sampled at pixel centres (``align_corners=False``), and the same
    fill rule (a ones channel is sampled alongside and multiplies the result, so edge pixels
    fade towards the fill as torchvision's do).
    """
    n, c, h, w = images.shape
    turn = torch.deg2rad(degrees.to(device=images.device, dtype=torch.float64))
    cos, sin, zero = turn.cos(), turn.sin(), torch.zeros_like(turn)
    # the inverse map in coordinates normalised to [-1, 1] on each axis (hence the aspect terms)
    theta = torch.stack((cos, -sin * (h / w), zero, sin * (w / h), cos, zero), dim=1)
    grid = F.affine_grid(theta.view(n, 2, 3).to(images.dtype), [n, c, h, w], align_corners=False)
    with_mask = torch.cat((images, images.new_ones(n, 1, h, w)), dim=1)
    sampled = F.grid_sample(
        with_mask, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return sampled[:, :c] * sampled[:, c:]


def grayscale(pixels: torch.Tensor) -> torch.Tensor:
    """Luma [B, 1, H, W] of RGB pixels, with torchvision's (ITU-R 601-2) weights."""
    r, g, b = pixels.unbind(dim=1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1)


def blend(pixels: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``factor * pixels + (1 - factor) * other`` per image, clamped to [0, 1] (a new tensor)."""
    keep = _per_image(factor, pixels)
    rest = _per_image(1.0 - factor.to(torch.float64), pixels)
    return pixels.mul(keep).add_(other * rest).clamp_(0.0, 1.0)


def adjust_brightness(pixels: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return pixels.mul(_per_image(factor, pixels)).clamp_(0.0, 1.0)


def adjust_contrast(pixels: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = grayscale(pixels).mean(dim=(1, 2, 3), keepdim=True)
    return blend(pixels, mean, factor)


def adjust_saturation(pixels: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(pixels, grayscale(pixels), factor)


def adjust_hue(pixels: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Hue turned by ``shift`` (a fraction of the colour circle, in [-0.5, 0.5]) per image.

    Through HSV as torchvision's ``adjust_hue``: value (the largest channel) and saturation
    stay, the hue moves round the circle, and the pixel is rebuilt from the hue's sector.
    """
    top, bottom = pixels.amax(dim=1), pixels.amin(dim=1)
    grey = top == bottom
    chroma = top - bottom
    saturation = chroma / torch.where(grey, torch.ones_like(top), top)
    spread = torch.where(grey, torch.ones_like(chroma), chroma)
    # each channel's distance below the top one, in units of the chroma
    dr, dg, db = ((top - channel) / spread for channel in pixels.unbind(dim=1))
    red, green = top == pixels[:, 0], top == pixels[:, 1]
    hue = red * (db - dg) + (green & ~red) * (2.0 + dr - db) + (~green & ~red) * (4.0 + dg - dr)
    hue = (hue / 6.0 + _per_image(shift, pixels)[:, 0]).remainder(1.0)  # turned, in [0, 1)

    # back to RGB: channel k of (5, 3, 1) for (R, G, B) is v - v * s * clamp(min(k', 4 - k'), 0, 1)
    # with k' = (k + 6 * hue) mod 6, the sector table of torchvision's _hsv_to_rgb in closed form
    sixths = hue * 6.0
    drop = top * saturation
    channels = []
    for k in (5.0, 3.0, 1.0):
        turn = (sixths + k).remainder(6.0)
        channels.append(top - drop * torch.minimum(turn, 4.0 - turn).clamp_(0.0, 1.0))
    return torch.stack(channels, dim=1)
