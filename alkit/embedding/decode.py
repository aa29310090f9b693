"""Decoding and preprocessing images in DataLoader workers, one batch per work item.

The DataLoader gets `batch_size=None` and a sampler that yields whole batches of
`(image_id, path)` pairs streamed from the database, so nothing pool-sized is held in RAM
and each worker decodes a full batch. A file that fails to decode is reported back as
`(image_id, reason)`; the batch goes on without it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from alkit.arrays import iter_chunks

DRAFT_SCALE_MARGIN = 2  # JPEG draft decoding only when the short side is over this many times the model's input
SIXTEEN_TO_EIGHT_BIT = 257.0  # 65535 / 255: maps the 16-bit range onto the 8-bit one
ERROR_TEXT_CHARS = 200  # longest decoder error quoted in a rejection reason
DECODE_WORKER_NICENESS = 10  # `nice` increment of decode workers (the forward pass keeps priority)
PREFETCH_BATCHES = 2  # batches each decode worker prepares ahead


def open_rgb_image(path: str, min_size: int, max_pixels: int | None = None):
    """Decode an image for a model of input size `min_size`.

    JPEGs are decoded at a reduced DCT scale (PIL draft mode) as long as both sides stay
    >= min_size, which makes large photos 3x cheaper to decode; the model's own transform
    does the exact resize afterwards.
    """
    from PIL import Image

    from alkit.imagefiles import aspect_problem, open_regular_file

    with open_regular_file(path) as handle:  # never blocks on a FIFO nor reads a device
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(handle)
        # Both guards run on the header, before any pixel is allocated: the total, and the
        # aspect ratio (the model's resize of a 1x60000 strip to a 224-pixel short side is 13M x 224).
        if max_pixels is not None and image.size[0] * image.size[1] > max_pixels:
            raise ValueError(f"decompression bomb ({image.size[0]}x{image.size[1]} > {max_pixels} pixels)")
        problem = aspect_problem(*image.size)
        if problem:
            raise ValueError(problem)
        if image.format == "JPEG" and min(image.size) > DRAFT_SCALE_MARGIN * min_size:
            image.draft("RGB", (min_size, min_size))
        image.load()
    image = _upright(image)
    if image.mode.startswith("I;16") or image.mode == "I":
        image = _to_8bit(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def _upright(image):
    """Apply the EXIF orientation, as viewers (and annotators in Label Studio) see the photo."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block never rejects an otherwise readable image
        return image


def _to_8bit(image):
    """16-bit grayscale -> 8-bit L; PIL's own convert clips everything above 255 to white."""
    import numpy as np
    from PIL import Image

    array = np.asarray(image, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(array / SIXTEEN_TO_EIGHT_BIT), 0, 255).astype(np.uint8), "L")


@dataclass
class BatchDecoder:
    """Map-style dataset whose 'index' is a batch: [(image_id, path), ...] -> dict.

    Returns {"ids": int64 (b,), "pixels": (b, 3, H, W) or None, "failed": [(id, reason)]}.
    """

    transform: Callable[[Any], Any]
    min_size: int
    max_pixels: int | None = None

    def __getitem__(self, batch: list[tuple[int, str]]) -> dict:
        import torch

        ids, tensors, failed = [], [], []
        for image_id, path in batch:
            try:
                tensors.append(self.transform(open_rgb_image(path, self.min_size, self.max_pixels)))
                ids.append(image_id)
            except Exception as error:  # any decode problem rejects this one image only
                reason = str(error).splitlines()[0][:ERROR_TEXT_CHARS] if str(error) else type(error).__name__
                failed.append((int(image_id), f"decode failed at embed time: {reason}"))
        return {
            "ids": torch.tensor(ids, dtype=torch.int64),
            "pixels": torch.stack(tensors) if tensors else None,
            "failed": failed,
        }


class _BatchStream:
    """An iterable sampler (re-iterable: each `iter` calls `make_items` afresh)."""

    def __init__(self, make_items: Callable[[], Iterable[tuple[int, str]]], batch_size: int):
        self.make_items = make_items
        self.batch_size = batch_size

    def __iter__(self):
        return iter_chunks(self.make_items(), self.batch_size)


def _as_is(item):
    return item


def _lower_priority(_worker_id: int) -> None:
    """Decode workers yield the CPU to the forward pass: a preempted intra-op thread stalls a
    whole matmul, while decoding needs only a few percent of the CPU to keep ahead."""
    import os

    try:
        os.nice(DECODE_WORKER_NICENESS)
    except OSError:
        pass


def batch_loader(decoder: BatchDecoder, make_items: Callable[[], Iterable[tuple[int, str]]], batch_size: int, workers: int):
    """A DataLoader over streamed batches; decoding overlaps the forward pass when workers > 0."""
    from torch.utils.data import DataLoader

    return DataLoader(
        decoder,
        sampler=_BatchStream(make_items, batch_size),
        batch_size=None,
        num_workers=workers,
        collate_fn=_as_is,
        worker_init_fn=_lower_priority if workers > 0 else None,
        prefetch_factor=PREFETCH_BATCHES if workers > 0 else None,
        persistent_workers=False,
    )
