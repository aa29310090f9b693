"""Zero-shot class probabilities of an open_clip model from class prompts."""

from __future__ import annotations

import numpy as np


def zero_shot_probs(model, tokenizer, image_batch, prompts: list[str], chunk_size: int = 512) -> np.ndarray:
    """probs (N, K) = softmax(s * u @ v.T) for preprocessed images (N, 3, H, W) and K prompts.

    u, v are unit-norm image/text embeddings; s = exp(logit_scale), as CLIP was trained.
    """
    import torch

    with torch.no_grad():
        text = model.encode_text(tokenizer(prompts), normalize=True)  # (K, D)
        scale = model.logit_scale.exp()
        chunks = []
        for start in range(0, len(image_batch), chunk_size):
            image = model.encode_image(image_batch[start : start + chunk_size], normalize=True)  # (n, D)
            chunks.append(torch.softmax(scale * image @ text.T, dim=-1))
    return torch.cat(chunks).double().numpy()


def zero_shot_evaluation(checkpoint, split, num_bins: int = 15) -> dict[str, dict[str, float]]:
    """Zero-shot metrics of a tiny-CLIP checkpoint on the split's clean test, shifted test and pool.

    Returns {"test_clean": summary, "test_shifted": summary, "pool_shifted": summary}, each
    summary from `alkit.metrics.summary` (accuracy, nll, brier, ece) plus mean confidence.
    """
    from alkit.demo.data import class_prompts, images_to_tensor
    from alkit.demo.tiny_clip import create_tiny_clip
    from alkit.metrics import summary

    model, preprocess, tokenizer = create_tiny_clip(checkpoint)
    parts = {
        "test_clean": (split.test_clean_images, split.test_labels),
        "test_shifted": (split.test_images, split.test_labels),
        "pool_shifted": (split.pool_images, split.pool_labels),
    }
    results = {}
    for name, (images, labels) in parts.items():
        probs = zero_shot_probs(model, tokenizer, images_to_tensor(images, preprocess), class_prompts())
        results[name] = {**summary(probs, labels, num_bins), "mean_confidence": float(probs.max(axis=1).mean())}
    return results
