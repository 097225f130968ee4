"""Images leave the loader as uint8 and are made float on whole batches, where they are used.

A loader that stops at uint8 tensors sends a quarter of the bytes between processes and to
the device, and its workers, which share the cores with the model, skip two per-image steps.
``BatchNormalize`` then makes, from the whole batch at once, the very float32 values that
torchvision's ``ToTensor`` + ``Normalize`` make image by image (as timm's prefetcher does).
"""

from __future__ import annotations

import torch


class BatchNormalize:
    """uint8 images [N, 3, H, W] → ``Normalize(mean, std)(ToTensor()(image))`` of each, bit
    for bit: the same float32 operations (÷ 255, − mean, ÷ std) on the whole batch."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"BatchNormalize takes uint8 images, not {images.dtype}")
        x = images.to(torch.float32).div_(255)
        if x.device not in self._on:  # copied once per device: no host-to-device copy per batch
            self._on[x.device] = (self.mean.to(x.device), self.std.to(x.device))
        mean, std = self._on[x.device]
        return x.sub_(mean).div_(std)
