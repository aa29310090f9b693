"""A tiny CLIP-style open_clip model config, and the features BayesVLM needs from it.

open_clip's standard `CLIP` class (no `custom_text`) keeps the two projection layers that
BayesVLM puts its Laplace posterior on:

- image side: `model.visual.proj`, a parameter of shape (d, D); open_clip computes
  `g = phi @ visual.proj`, so the science notation's P (D x d) is `visual.proj.T`.
  phi (N, d) is the pooled ViT feature (class token after `ln_post`) entering it.
- text side: `model.text_projection`, a parameter of shape (d_text, D); `h = psi @
  text_projection`, so Q = `text_projection.T`. psi is the pooled (argmax = end-of-text
  token) feature after `ln_final`.

phi/psi are read by running the normal forward with the projection set to `None` for the
duration of the call (open_clip's own towers skip a `None` projection). This works for any
open_clip ViT/CLIP config, not only the tiny one, and needs no private methods.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from alkit.embedding.tiny import TINY_CLIP_CONFIG, TINY_CLIP_NAME, register_config


def register_tiny_clip_config(name: str = TINY_CLIP_NAME, config: dict[str, Any] | None = None) -> str:
    """Make `open_clip.create_model_and_transforms(name, ...)` know the tiny config; returns name.
    Idempotent (see `alkit.embedding.tiny.register_config`)."""
    return register_config(name, TINY_CLIP_CONFIG if config is None else config)


def create_tiny_clip(pretrained: str | Path | None = None, name: str = TINY_CLIP_NAME, seed: int = 0):
    """(model in eval mode, preprocess, tokenizer) for the tiny config; random weights if no file.

    With `pretrained=None` the weights are a seeded random initialisation (for fast tests
    that need a real open_clip model); with a path, open_clip loads the checkpoint strictly.
    """
    import open_clip
    import torch

    register_tiny_clip_config(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=None if pretrained is None else str(pretrained)
        )
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(name)


@contextlib.contextmanager
def projection_removed(module, attribute: str) -> Iterator[Any]:
    """Temporarily set `module.<attribute>` (a projection parameter) to None; yields it."""
    projection = getattr(module, attribute)
    if projection is None:
        raise ValueError(f"{type(module).__name__}.{attribute} is None: the model has no projection layer to read")
    setattr(module, attribute, None)
    try:
        yield projection
    finally:
        setattr(module, attribute, projection)


def image_features_and_phi(model, images):
    """(emb (N, D) unit-norm image embeddings, phi (N, d) inputs of `visual.proj`).

    `images` is a preprocessed batch (N, 3, H, W). The unnormalised embedding is
    `phi @ model.visual.proj`, exactly what `model.encode_image` computes.
    """
    import torch
    import torch.nn.functional as F

    with torch.no_grad(), projection_removed(model.visual, "proj") as proj:
        phi = model.visual(images)  # (N, d)
        embedding = phi @ proj  # (N, D)
    return F.normalize(embedding, dim=-1), phi


def text_features_and_psi(model, tokens):
    """(emb (C, D) unit-norm text embeddings, psi (C, d_text) inputs of `text_projection`)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad(), projection_removed(model, "text_projection") as projection:
        psi = model.encode_text(tokens)  # (C, d_text)
        embedding = psi @ projection  # (C, D)
    return F.normalize(embedding, dim=-1), psi


def image_projection_matrix(model):
    """P (D, d): the image projection in the science notation (`visual.proj.T`), detached."""
    return model.visual.proj.detach().T


def text_projection_matrix(model):
    """Q (D, d_text): the text projection in the science notation (`text_projection.T`)."""
    return model.text_projection.detach().T
