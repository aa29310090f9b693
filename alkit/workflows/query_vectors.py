"""Query vectors of one request, unit norm: a text query, example images, a target split.

Used by `alkit select --query/--like/--target` (whose candidates are the pool items nearest
these vectors, `workflows.index.nearest_candidates`) and by `alkit similar`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from alkit.arrays import l2_normalise
from alkit.errors import InputError, StateError
from alkit.project import Project


def _unit(rows: np.ndarray) -> np.ndarray:
    return l2_normalise(np.asarray(rows, dtype=np.float32))


def embed_new_images(project: Project, spec, paths: list[str]) -> np.ndarray:
    """Unit embeddings `(Q, D)` of image files that are not in the pool, with the spec's model."""
    import torch

    from alkit.embedding.decode import open_rgb_image
    from alkit.workflows.embed_model import encoder_for_spec

    encoder = encoder_for_spec(project, spec)
    pixels = []
    for path in paths:
        try:
            image = open_rgb_image(path, encoder.image_size, project.settings.max_pixels)
        except Exception as error:  # decode errors of any kind: report the file
            raise InputError(f"cannot read image {path}: {error}; pass a readable image file") from None
        pixels.append(encoder.preprocess(image))
    emb, _ = encoder.encode_pixels(torch.stack(pixels))
    return _unit(emb.numpy())


def image_vectors(project: Project, spec, paths: list[str]) -> np.ndarray:
    """Unit embeddings `(Q, D)` of example images: stored vectors for pool images, else embedded."""
    from alkit.storage.images import ids_by_path
    from alkit.storage.vectors import load_vectors

    resolved = [os.path.realpath(p) for p in paths]
    missing = [p for p in resolved if not Path(p).is_file()]
    if missing:
        raise InputError(f"image not found: {missing[0]}; check the path")
    with project.engine.connect() as connection:
        known = ids_by_path(connection, resolved)
    vectors = []
    new_paths = [p for p in resolved if p not in known]
    new_vectors = dict(zip(new_paths, embed_new_images(project, spec, new_paths))) if new_paths else {}
    for path in resolved:
        if path in new_vectors:
            vectors.append(new_vectors[path])
            continue
        ids, found = load_vectors(project, spec.id, [known[path]])
        if len(ids) == 0:
            vectors.append(embed_new_images(project, spec, [path])[0])
        else:
            vectors.append(found[0])
    return _unit(np.stack(vectors))


def text_vectors(project: Project, spec, texts: list[str]) -> np.ndarray:
    from alkit.workflows.embed_model import encoder_for_spec

    encoder = encoder_for_spec(project, spec)  # StateError for imported specs, with the fix
    emb, _ = encoder.encode_texts(texts)
    return _unit(emb.numpy())


def split_vectors(project: Project, spec, split: str) -> np.ndarray:
    from alkit.storage.vectors import load_vectors

    _, vectors = load_vectors(project, spec.id, split=split)
    if len(vectors) == 0:
        raise StateError(f"split {split!r} has no embedded images; `alkit add --split {split}` and `alkit embed`")
    return _unit(vectors)


def query_vectors(project: Project, spec, text: str | None = None, like: list[str] | None = None,
                  target_split: str | None = None) -> np.ndarray:
    """All query vectors `(Q, D)` of one request, stacked."""
    parts = []
    if text:
        parts.append(text_vectors(project, spec, [text]))
    if like:
        parts.append(image_vectors(project, spec, like))
    if target_split:
        parts.append(split_vectors(project, spec, target_split))
    if not parts:
        raise InputError("give a text query, example images or a target split")
    return np.concatenate(parts)
