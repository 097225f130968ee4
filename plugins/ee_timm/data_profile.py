"""Which defaults profile fits the data: chosen from the images themselves, not from their origin.

``ee produce --data DIR`` looks at a sample of DIR's images before it resolves the recipe: up to
``SAMPLE_LIMIT`` (64) image files, spread over every folder that holds images (each class of
each split) and picked at even steps through the sorted names, so the same folder always gives
the same sample. Only headers are read (``PIL.Image.open`` decodes nothing). A median shorter
side below ``SMALL_SIDE`` (64 px, under a third of the seed's 224) gets the ``digits`` profile,
sized for small images (32 px, 30 epochs, lr 0.05; see ``recipe_spec.PROFILES``); anything
else, or a folder with no image to measure, gets ``imagenet``. Without ``--data`` (the embedded
32-px digits) the profile is ``digits``. A recipe file's ``defaults:`` or ``--set defaults=…``
still decides over the data; ``resolve_request`` says which of them did, in one line.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ensemble_engine import ProduceRequest

from .recipe import Recipe
from .recipe_resolve import resolve_with_sources

SAMPLE_LIMIT = 64  # images measured
SMALL_SIDE = 64  # a median shorter side below this (pixels) gets the small-image profile
SMALL_PROFILE = "digits"
LARGE_PROFILE = "imagenet"
# The suffixes ee_data's image folders read (a built-in plugin does not import another).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
PROFILE_RULE = (
    f"ee produce picks the profile from the data: {SMALL_PROFILE} where the median shorter side "
    f"of up to {SAMPLE_LIMIT} sampled images is below {SMALL_SIDE} px (and without --data: the "
    f"embedded digits), else {LARGE_PROFILE}; a recipe file's defaults: or --set defaults=NAME "
    "decides over the data"
)
_HEADER_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


@dataclass(frozen=True)
class ProfileChoice:
    """The profile the data asks for, and why (``reason`` reads after "defaults: NAME (")."""

    profile: str
    reason: str


def sample_images(root: Path, limit: int = SAMPLE_LIMIT) -> list[Path]:
    """Up to ``limit`` image files under ``root``: an even share of each folder holding images
    (non-hidden, sorted names), then even steps through those; the same folder, the same list."""
    groups: list[list[Path]] = []
    for current, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        images = sorted(
            f for f in files if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS
        )
        if images:
            groups.append([Path(current, f) for f in images])
    if not groups:
        return []
    share = -(-limit // len(groups))  # ceil: every folder gives at least one image
    picked = [group[i * len(group) // min(share, len(group))] for group in groups
              for i in range(min(share, len(group)))]  # fmt: skip
    if len(picked) > limit:
        picked = [picked[i * len(picked) // limit] for i in range(limit)]
    return picked


def image_sizes(paths: list[Path]) -> list[tuple[int, int]]:
    """``(width, height)`` of each image whose header PIL reads; the others are left out."""
    sizes = []
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes.append(image.size)
        except _HEADER_ERRORS:
            continue
    return sizes


def choose_profile(data_dir: Path | None) -> ProfileChoice:
    """The defaults profile for ``data_dir`` (None: the embedded digits), from its images' sizes."""
    if data_dir is None:
        return ProfileChoice(SMALL_PROFILE, "the embedded digits, 32×32 px")
    sizes = image_sizes(sample_images(Path(data_dir)))
    if not sizes:
        return ProfileChoice(LARGE_PROFILE, f"no image in {data_dir} to measure")
    median = statistics.median(min(w, h) for w, h in sizes)
    small = min(sizes, key=lambda s: (s[0] * s[1], s))
    large = max(sizes, key=lambda s: (s[0] * s[1], s))
    shown = f"all {_px(small)}" if small == large else f"{_px(small)} to {_px(large)}"
    small_data = median < SMALL_SIDE
    reason = (
        f"{len(sizes)} sampled images, {shown} px, median shorter side {median:g} px "
        f"{'<' if small_data else '>='} {SMALL_SIDE}"
    )
    return ProfileChoice(SMALL_PROFILE if small_data else LARGE_PROFILE, reason)


def _px(size: tuple[int, int]) -> str:
    return f"{size[0]}×{size[1]}"


@dataclass(frozen=True)
class ResolvedRequest:
    """A request's recipe, where each value came from, and the line that says which profile."""

    recipe: Recipe
    sources: dict[str, str]
    choice: ProfileChoice

    @property
    def defaults_line(self) -> str:
        """``defaults: NAME (why): how to change it``: the data's choice, or who overrode it."""
        name, origin = self.recipe.defaults, self.sources["defaults"]
        if not origin.startswith("data"):
            return f"defaults: {name} ({origin}; the data alone would give {self.choice.profile})"
        other = LARGE_PROFILE if name == SMALL_PROFILE else SMALL_PROFILE
        return f"defaults: {name} ({self.choice.reason}): --set defaults={other} to override"


def resolve_request(request: ProduceRequest) -> ResolvedRequest:
    """The request's recipe: its name or file, the profile its data asks for (unless the file
    or ``--set defaults=…`` names one), the overrides, and the subset of a specialist run."""
    choice = choose_profile(request.data_dir)
    overrides: dict[str, Any] = dict(request.overrides)
    if request.subset is not None:
        overrides["subset"] = [str(c) for c in request.subset]
    recipe, sources = resolve_with_sources(
        request.recipe, overrides, defaults=choice.profile, defaults_source=f"data: {choice.reason}"
    )
    return ResolvedRequest(recipe, sources, choice)
