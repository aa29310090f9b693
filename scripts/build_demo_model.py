"""Build (or reuse) the demo's tiny CLIP checkpoint and print its figures as JSON.

    HF_HUB_OFFLINE=1 python scripts/build_demo_model.py [--cache-dir DIR] [--probe]

Prints the checkpoint path, training time (from the cache sidecar), checkpoint size, and
zero-shot accuracy / NLL / Brier / ECE on the clean test part, the shifted test part and
the shifted pool. `--probe` adds a logistic-regression probe on the frozen, shifted pool
embeddings (100 and 2,000 labels): what labels can buy on top of zero-shot.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def linear_probe(checkpoint, split, label_counts=(100, 2000), seed=0) -> dict[str, float]:
    """Test accuracy of logistic regression on frozen pool embeddings, per number of labels."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from alkit.demo.data import images_to_tensor
    from alkit.demo.tiny_clip import create_tiny_clip, image_features_and_phi

    model, preprocess, _ = create_tiny_clip(checkpoint)
    pool, _ = image_features_and_phi(model, images_to_tensor(split.pool_images, preprocess))
    test, _ = image_features_and_phi(model, images_to_tensor(split.test_images, preprocess))
    order = np.random.default_rng(seed).permutation(len(pool))
    results = {}
    for count in label_counts:
        chosen = order[:count]
        classifier = LogisticRegression(max_iter=2000, C=10.0).fit(pool[chosen].numpy(), split.pool_labels[chosen])
        results[f"probe_{count}_labels"] = float(classifier.score(test.numpy(), split.test_labels))
    return results


def main() -> None:
    from alkit.demo.data import make_demo_split
    from alkit.demo.train_clip import default_cache_dir, ensure_demo_model
    from alkit.demo.zero_shot import zero_shot_evaluation

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=None, help=f"default: {default_cache_dir()}")
    parser.add_argument("--probe", action="store_true", help="also fit linear probes on shifted pool embeddings")
    arguments = parser.parse_args()

    checkpoint = ensure_demo_model(arguments.cache_dir)
    split = make_demo_split(seed=0)
    result = {
        "checkpoint": str(checkpoint),
        "checkpoint_bytes": checkpoint.stat().st_size,
        "training": json.loads(checkpoint.with_suffix(".json").read_text()),
        "zero_shot": zero_shot_evaluation(checkpoint, split),
    }
    if arguments.probe:
        result["linear_probe_shifted"] = linear_probe(checkpoint, split)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
