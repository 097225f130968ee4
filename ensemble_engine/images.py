"""Reading one image file, as every producer and dataset plugin reads it."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from .errors import DataError


def load_image(path: Path | str) -> Image.Image:
    """The image at ``path``, decoded and converted to RGB."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}; replace or remove the file") from exc
