"""Register your own acquisition score by name and select with it, from Python.

    python examples/custom_scorer.py [WORKDIR]

A scorer maps shared posterior samples `probs (S, N, K)` to `scores (N,)` (higher = more
informative). Once registered in `alkit.acquisition.SCORERS` it is a strategy like any other:
`select_round(project, SelectSettings(budget=..., strategy="variation_ratio"))`.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np


def variation_ratio(probs) -> np.ndarray:
    """1 - (share of posterior samples that vote for the modal class), `(S, N, K) -> (N,)`."""
    probs = np.asarray(probs)
    votes = probs.argmax(axis=-1)  # (S, N)
    num_classes = probs.shape[-1]
    counts = np.stack([(votes == k).sum(axis=0) for k in range(num_classes)], axis=-1)  # (N, K)
    return 1.0 - counts.max(axis=-1) / probs.shape[0]


def register() -> None:
    from alkit.acquisition import SCORERS, ScorerSpec

    if "variation_ratio" not in SCORERS:
        SCORERS.register(
            "variation_ratio",
            ScorerSpec(variation_ratio, "share of samples disagreeing with the modal class", True, False),
            "share of samples disagreeing with the modal class",
        )


def make_pool(directory: Path, count: int = 40, num_classes: int = 3, dim: int = 16, seed: int = 0):
    """Tiny PNGs plus imported embeddings in `num_classes` clusters and matching text embeddings."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = np.arange(count) % num_classes
    paths = []
    for index in range(count):
        path = directory / "images" / f"img_{index:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    vectors = centres[truth] + 0.8 * rng.normal(size=(count, dim))
    np.savez(directory / "embeddings.npz", paths=np.array(paths), embeddings=vectors.astype(np.float32),
             text_embeddings=centres.astype(np.float32))
    return paths, truth


def main(workdir: Path) -> list[int]:
    from alkit.project import init_project, open_project
    from alkit.workflows.classes import set_classes
    from alkit.workflows.embed_import import import_embeddings
    from alkit.workflows.fit import fit_posterior
    from alkit.workflows.ingest import add_images
    from alkit.workflows.select import SelectSettings, select_round

    register()
    paths, _ = make_pool(workdir)
    init_project(workdir / "project")
    project = open_project(workdir / "project")
    add_images(project, [str(workdir / "images")], show_progress=False)
    set_classes(project, ["a", "b", "c"])
    import_embeddings(project, workdir / "embeddings.npz", name="example", show_progress=False)
    fitted = fit_posterior(project)
    result = select_round(project, SelectSettings(budget=5, strategy="variation_ratio", seed=1))
    print(f"posterior v{fitted.version} ({fitted.kind}); round {result.round_id} by {result.strategy}:")
    for item in result.items:
        print(f"  {item.rank}. image {item.image_id} score {item.score:.3f} predicted {item.predicted_class} {item.path}")
    return [item.image_id for item in result.items]


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
