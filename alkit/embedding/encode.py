"""From decoded pixels to the arrays alkit stores, and the local engine that runs it over a
work queue (the Ray engine is `alkit.embedding.ray_engine`).

The local engine decodes in DataLoader workers (`alkit.embedding.decode`) while this process
runs the forward passes; every image comes back to the queue, as vectors or as a rejection.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import numpy as np

from alkit.arrays import l2_normalise


class ProgressBar(Protocol):
    def update(self, count: int) -> Any: ...


def encode_batch(encoder, pixels) -> dict[str, np.ndarray]:
    """Stored arrays of one batch: unit-norm embedding (b, D) and, where the model has it, phi (b, d)."""
    emb, phi = encoder.encode_pixels(pixels)  # (b, D), (b, d) | None
    arrays = {"embedding": l2_normalise(emb.float().numpy())}
    if phi is not None:
        arrays["phi"] = phi.float().numpy()
    return arrays


def run_local_embed(queue, encoder, batch_size: int, workers: int, max_pixels: int | None, bar: ProgressBar,
                    encode: Callable[[Any, Any], dict[str, np.ndarray]] = encode_batch) -> None:
    """Embed everything `queue` (an `alkit.storage.work_queue.WorkQueue`) hands out, in this
    process; results go back through `queue.add`, one batch at a time. `encode(encoder, pixels)`
    gives a batch's arrays (`encode_batch`; with CVP also their variances)."""
    from alkit.embedding.decode import BatchDecoder, batch_loader

    decoder = BatchDecoder(encoder.preprocess, encoder.image_size, max_pixels)
    for batch in batch_loader(decoder, queue.items, batch_size, workers):
        arrays = encode(encoder, batch["pixels"]) if batch["pixels"] is not None else {}
        queue.add(batch["ids"].numpy(), arrays, batch["failed"])
        bar.update(len(batch["ids"]) + len(batch["failed"]))
