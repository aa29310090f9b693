"""How good the demo's encoder is on the shifted domain: zero-shot accuracy vs a linear probe.

The linear probe (multinomial logistic regression on the image features, trained on every
pool image with its true label, scored on the shifted test split) is the ceiling that
labelling can reach with these features; zero-shot accuracy is where labelling starts.
Active learning is worth showing only when the gap between the two is wide.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alkit.jsonable import JsonResult


@dataclass(frozen=True)
class EncoderQuality(JsonResult):
    zero_shot_accuracy: float  # shifted test split, class prompts only
    zero_shot_clean_accuracy: float  # the same test images, unshifted
    linear_probe_accuracy: float  # shifted test split, probe trained on all pool labels
    pool_size: int
    test_size: int


def image_features(checkpoint, images: np.ndarray, kind: str = "phi") -> np.ndarray:
    """(n, d) features of uint8 images (n, 28, 28): `phi` (input of the image projection) or `embedding`."""
    import torch

    from alkit.demo.data import images_to_tensor
    from alkit.demo.tiny_clip import create_tiny_clip, image_features_and_phi

    model, preprocess, _ = create_tiny_clip(checkpoint)
    chunks = []
    for start in range(0, len(images), 512):
        embedding, phi = image_features_and_phi(model, images_to_tensor(images[start : start + 512], preprocess))
        chunks.append(phi if kind == "phi" else embedding)
    return torch.cat(chunks).double().numpy()


def linear_probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                          regularisation: float = 1.0) -> float:
    """Test accuracy of an L2-regularised multinomial logistic regression on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=regularisation, max_iter=2000))
    probe.fit(train_x, train_y)
    return float((probe.predict(test_x) == test_y).mean())


def encoder_quality(checkpoint, split) -> EncoderQuality:
    """Zero-shot (clean and shifted test) and linear-probe accuracy of a tiny-CLIP checkpoint on a DemoSplit."""
    from alkit.demo.zero_shot import zero_shot_evaluation

    zero_shot = zero_shot_evaluation(checkpoint, split)
    pool_x = image_features(checkpoint, split.pool_images)
    test_x = image_features(checkpoint, split.test_images)
    return EncoderQuality(
        zero_shot_accuracy=zero_shot["test_shifted"]["accuracy"],
        zero_shot_clean_accuracy=zero_shot["test_clean"]["accuracy"],
        linear_probe_accuracy=linear_probe_accuracy(pool_x, split.pool_labels, test_x, split.test_labels),
        pool_size=len(split.pool_labels),
        test_size=len(split.test_labels),
    )
