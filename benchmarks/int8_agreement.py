"""Benchmark: agreement of `alkit embed --precision int8` (dynamic quantisation) with fp32.

Both encoders come from `alkit.embedding.model.load_open_clip` on CPU, as `alkit embed` loads
them; the same preprocessed pixels go through both. Reported per model:

- cosine between the fp32 and int8 image embeddings (and phi, the pre-projection features
  alkit stores for BayesVLM): min / 1st percentile / mean over the images;
- zero-shot top-1 agreement: argmax of cosine to the class-prompt text embeddings, each model
  with its own text tower (int8 quantises the text tower too), and each one's accuracy.

Models: the demo's trained tiny CLIP (`alkit.demo.train_clip.ensure_demo_model`: real-like
trained weights; its test images and pool, MNIST digits restyled) and a randomly initialised
ViT-B-32 (`--vit-images` demo images upscaled by its preprocessing; zero-shot is meaningless
for random weights and is printed for completeness only).

    python -m benchmarks.int8_agreement [--vit-images 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def _unit(rows):
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _cosines(a, b) -> np.ndarray:
    return np.sum(_unit(a) * _unit(b), axis=1)


def agreement(architecture: str, weights, pixels, prompts: list[str], labels=None) -> dict:
    """fp32 vs int8 on the same `pixels (n, 3, H, W)`: cosines and zero-shot agreement."""
    from alkit.embedding.model import load_open_clip

    out = {}
    predictions = {}
    embeddings = {}
    for precision in ("fp32", "int8"):
        encoder = load_open_clip(architecture, weights, "cpu", precision)
        emb, phi = encoder.encode_pixels(pixels)
        text, _ = encoder.encode_texts(prompts)
        embeddings[precision] = (emb.numpy(), None if phi is None else phi.numpy())
        predictions[precision] = (_unit(emb.numpy()) @ _unit(text.numpy()).T).argmax(axis=1)
    for index, kind in enumerate(("embedding", "phi")):
        if embeddings["fp32"][index] is None:
            continue
        cos = _cosines(embeddings["fp32"][index], embeddings["int8"][index])
        out[f"{kind} cosine min"] = float(cos.min())
        out[f"{kind} cosine p1"] = float(np.percentile(cos, 1))
        out[f"{kind} cosine mean"] = float(cos.mean())
    out["zero-shot top-1 agreement"] = float(np.mean(predictions["fp32"] == predictions["int8"]))
    if labels is not None:
        out["zero-shot accuracy fp32"] = float(np.mean(predictions["fp32"] == labels))
        out["zero-shot accuracy int8"] = float(np.mean(predictions["int8"] == labels))
    out["images"] = int(len(pixels))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vit-images", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from alkit.demo.data import class_prompts, images_to_tensor, make_demo_split
    from alkit.demo.tiny_clip import TINY_CLIP_NAME, create_tiny_clip, register_tiny_clip_config
    from alkit.demo.train_clip import ensure_demo_model
    from alkit.embedding.spec import WeightsSource

    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    register_tiny_clip_config()
    checkpoint = ensure_demo_model()
    split = make_demo_split(seed=0)
    _, preprocess, _ = create_tiny_clip(checkpoint)
    images = np.concatenate([split.test_images, split.pool_images])
    labels = np.concatenate([split.test_labels, split.pool_labels])
    rows = {"tiny CLIP (demo, trained)": agreement(
        TINY_CLIP_NAME, WeightsSource("checkpoint", str(checkpoint)), images_to_tensor(images, preprocess),
        class_prompts(), labels,
    )}
    import open_clip

    _, _, vit_preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    rows["ViT-B-32 (random init, seed 0)"] = agreement(
        "ViT-B-32", WeightsSource("random", None, random_seed=0),
        images_to_tensor(split.test_images[: args.vit_images], vit_preprocess), class_prompts(),
    )
    keys = sorted({k for row in rows.values() for k in row}, key=lambda k: (k != "images", k))
    print("\n| model | " + " | ".join(keys) + " |\n| --- |" + " ---: |" * len(keys))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join("" if k not in row else (f"{row[k]:.5f}" if isinstance(row[k], float) else str(row[k])) for k in keys) + " |")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (agreement figures do not depend on load)")


if __name__ == "__main__":
    main()
