"""Downscaled copies of images as PNG data URIs, for galleries inside one HTML file."""

from __future__ import annotations

import base64
import io
from pathlib import Path

THUMBNAIL_SIDE = 96  # pixels, longest side; small images are not enlarged (CSS scales them up)


def thumbnail_data_uri(path: str | Path, side: int = THUMBNAIL_SIDE) -> str | None:
    """`data:image/png;base64,...` of a copy of the image at most `side` pixels on its longest side.

    None when the file is missing or not a readable image: the gallery then shows the reason
    in words instead of a broken picture.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.draft("RGB", (side, side))  # JPEG: decode at a reduced scale, much faster
            copy = image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    copy.thumbnail((side, side))
    buffer = io.BytesIO()
    copy.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
